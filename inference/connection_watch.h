// Whether the client of a waiting HTTP request has gone away. cpp-httplib 0.11 (Debian 12) gives a
// handler no access to its socket and does not tell it that the peer closed, so a client that
// gives up on a non-streamed request would keep its query running to the end. The kernel knows:
// its TCP table (/proc/net/tcp, /proc/net/tcp6) lists the connection by its two endpoints, in
// CLOSE_WAIT once the peer has closed, and drops it after a reset.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

namespace glmrt {

inline constexpr int kTcpEstablished = 0x01;
inline constexpr int kTcpCloseWait = 0x08;  // the peer has closed its side
inline constexpr int kTcpListen = 0x0A;

// What a TCP table's text (the format of /proc/net/tcp or /proc/net/tcp6: "sl local_address
// rem_address st ...", addresses as the kernel's hex words, ports in hex) says of one connection:
// its state (nullopt: not listed), and whether a socket listens on its local port. Addresses as
// inet_ntop writes them ("127.0.0.1", "::1", "::ffff:10.0.0.2"); one that does not parse matches
// nothing.
struct TcpLookup {
  std::optional<int> state;
  bool listening = false;
};
TcpLookup tcp_lookup(const std::string& table, bool ipv6, const std::string& local_addr, int local_port,
                     const std::string& remote_addr, int remote_port);

class ConnectionWatch {
 public:
  ConnectionWatch(std::string local_addr, int local_port, std::string remote_addr, int remote_port,
                  std::chrono::milliseconds interval = std::chrono::milliseconds(250));
  // True once the connection is in CLOSE_WAIT, or missing from the table while it was listed
  // before or the server's listening socket is (a reset removes a connection at once). Reads the
  // tables at most once per interval. When neither is listed (no /proc, another network
  // namespace) the connection is taken as open: the watch never cancels what it cannot see.
  bool gone();

 private:
  std::string local_addr_, remote_addr_;
  int local_port_, remote_port_;
  std::chrono::milliseconds interval_;
  std::chrono::steady_clock::time_point next_check_{};
  bool seen_ = false, gone_ = false;
};

}  // namespace glmrt
