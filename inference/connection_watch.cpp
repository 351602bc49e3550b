#include "inference/connection_watch.h"

#include <arpa/inet.h>

#include <array>
#include <cstring>
#include <fstream>
#include <sstream>

namespace glmrt {

namespace {

// An address as the table writes it: 4 (IPv4) or 16 (IPv6) bytes in network order. IPv4 text
// against an IPv6 table becomes its mapped form ::ffff:a.b.c.d.
std::optional<std::array<unsigned char, 16>> address_bytes(const std::string& text, bool ipv6) {
  std::array<unsigned char, 16> out{};
  if (!ipv6) {
    in_addr a{};
    if (inet_pton(AF_INET, text.c_str(), &a) != 1) return std::nullopt;
    std::memcpy(out.data(), &a, 4);
    return out;
  }
  in6_addr a{};
  if (inet_pton(AF_INET6, text.c_str(), &a) == 1) {
    std::memcpy(out.data(), &a, 16);
    return out;
  }
  in_addr v4{};
  if (inet_pton(AF_INET, text.c_str(), &v4) != 1) return std::nullopt;
  out[10] = out[11] = 0xff;
  std::memcpy(out.data() + 12, &v4, 4);
  return out;
}

// "0100007F:1F90" (IPv4) or 32 hex digits ":" port (IPv6): the kernel prints each 32-bit word of
// the address as the integer it holds in memory (%08X), so each word is converted back to bytes.
bool parse_endpoint(const std::string& field, bool ipv6, std::array<unsigned char, 16>& addr, int& port) {
  const size_t colon = field.find(':');
  const size_t words = ipv6 ? 4 : 1;
  if (colon != words * 8 || field.size() != colon + 5) return false;
  addr = {};
  for (size_t w = 0; w < words; ++w) {
    uint32_t v = 0;
    for (size_t i = 0; i < 8; ++i) {
      const char c = field[w * 8 + i];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (d < 0) return false;
      v = v << 4 | static_cast<uint32_t>(d);
    }
    std::memcpy(addr.data() + 4 * w, &v, 4);
  }
  try {
    port = std::stoi(field.substr(colon + 1), nullptr, 16);
  } catch (...) {
    return false;
  }
  return true;
}

std::string read_file(const char* path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

TcpLookup tcp_lookup(const std::string& table, bool ipv6, const std::string& local_addr, int local_port,
                     const std::string& remote_addr, int remote_port) {
  TcpLookup out;
  const auto local = address_bytes(local_addr, ipv6), remote = address_bytes(remote_addr, ipv6);
  if (!local || !remote) return out;
  std::istringstream lines(table);
  std::string line;
  std::getline(lines, line);  // the header
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::string slot, l, r, st;
    if (!(fields >> slot >> l >> r >> st)) continue;
    std::array<unsigned char, 16> la{}, ra{};
    int lp = 0, rp = 0;
    if (!parse_endpoint(l, ipv6, la, lp) || !parse_endpoint(r, ipv6, ra, rp) || lp != local_port) continue;
    int state = -1;
    try {
      state = std::stoi(st, nullptr, 16);
    } catch (...) {
      continue;
    }
    if (state == kTcpListen) out.listening = true;
    if (rp == remote_port && la == *local && ra == *remote) out.state = state;
  }
  return out;
}

ConnectionWatch::ConnectionWatch(std::string local_addr, int local_port, std::string remote_addr,
                                 int remote_port, std::chrono::milliseconds interval)
    : local_addr_(std::move(local_addr)), remote_addr_(std::move(remote_addr)), local_port_(local_port),
      remote_port_(remote_port), interval_(interval) {}

bool ConnectionWatch::gone() {
  if (gone_ || local_port_ <= 0 || remote_port_ <= 0) return gone_;
  const auto now = std::chrono::steady_clock::now();
  if (now < next_check_) return false;
  next_check_ = now + interval_;
  // IPv4 clients of an IPv6 socket appear in tcp6 with mapped addresses; look in both tables.
  const TcpLookup v4 = tcp_lookup(read_file("/proc/net/tcp"), false, local_addr_, local_port_,
                                  remote_addr_, remote_port_);
  const TcpLookup v6 = tcp_lookup(read_file("/proc/net/tcp6"), true, local_addr_, local_port_,
                                  remote_addr_, remote_port_);
  const std::optional<int> state = v4.state ? v4.state : v6.state;
  if (state) {
    seen_ = true;
    gone_ = *state == kTcpCloseWait;
  } else {
    // Not listed: reset by the peer, if it was listed before or the server's listening socket is
    // (the table shows this server's connections); otherwise the table is not ours to read.
    gone_ = seen_ || v4.listening || v6.listening;
  }
  return gone_;
}

}  // namespace glmrt
