#include "checkpoint/torch_checkpoint.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <unordered_map>

namespace glmrt {

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw CheckpointError(path + ": " + what);
}

template <class T>
T load_le(const char* p) {  // little-endian (the host is little-endian, as in safetensors.cpp)
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// ---------------------------------------------------------------------------------------------
// Pickle objects
// ---------------------------------------------------------------------------------------------

struct PyObj;
using Obj = std::shared_ptr<PyObj>;

struct PyObj {
  enum class Kind { None, Bool, Int, Float, Str, Bytes, Tuple, List, Dict, Set, Global, Storage, Tensor, Opaque };
  Kind kind = Kind::None;
  int64_t i = 0;
  double f = 0;
  std::string s, s2;                     // Str/Bytes: s; Global: module s, name s2; Storage: type s, key s2
  std::vector<Obj> items;                // Tuple, List, Set
  std::vector<std::pair<Obj, Obj>> dict;  // Dict, in insertion order
  std::shared_ptr<TorchTensorInfo> tensor;  // Tensor
};

Obj make(PyObj::Kind kind) {
  auto o = std::make_shared<PyObj>();
  o->kind = kind;
  return o;
}

const char* kind_name(PyObj::Kind k) {
  switch (k) {
    case PyObj::Kind::None: return "None";
    case PyObj::Kind::Bool: return "bool";
    case PyObj::Kind::Int: return "int";
    case PyObj::Kind::Float: return "float";
    case PyObj::Kind::Str: return "str";
    case PyObj::Kind::Bytes: return "bytes";
    case PyObj::Kind::Tuple: return "tuple";
    case PyObj::Kind::List: return "list";
    case PyObj::Kind::Dict: return "dict";
    case PyObj::Kind::Set: return "set";
    case PyObj::Kind::Global: return "global";
    case PyObj::Kind::Storage: return "storage";
    case PyObj::Kind::Tensor: return "tensor";
    case PyObj::Kind::Opaque: return "object";
  }
  return "?";
}

struct StorageType {
  const char* name;
  std::optional<DType> dtype;
  size_t element_size;
};
const StorageType kStorageTypes[] = {
    {"HalfStorage", DType::F16, 2},   {"BFloat16Storage", DType::BF16, 2},
    {"FloatStorage", DType::F32, 4},  {"DoubleStorage", DType::F64, 8},
    {"LongStorage", DType::I64, 8},   {"IntStorage", DType::I32, 4},
    {"CharStorage", DType::I8, 1},    {"ByteStorage", std::nullopt, 1},
    {"BoolStorage", std::nullopt, 1}, {"ShortStorage", std::nullopt, 2},
    {"ComplexFloatStorage", std::nullopt, 8}, {"ComplexDoubleStorage", std::nullopt, 16},
};
const StorageType* storage_type(const std::string& name) {
  for (const StorageType& t : kStorageTypes)
    if (name == t.name) return &t;
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// The unpickler: interprets opcodes into PyObj values; executes nothing.
// ---------------------------------------------------------------------------------------------

class Unpickler {
 public:
  Unpickler(const std::string& where, const char* p, size_t n) : where_(where), p_(p), n_(n) {}

  Obj load() {
    while (true) {
      op_at_ = pos_;
      const uint8_t op = u8();
      switch (op) {
        case 0x80: u8(); break;                 // PROTO
        case 0x95: bytes(8); break;             // FRAME (the frame's bytes follow inline)
        case '.': {                             // STOP
          if (stack_.size() != 1 || !marks_.empty()) error("STOP with an unbalanced stack");
          return stack_.back();
        }
        case '(': marks_.push_back(stack_.size()); break;  // MARK
        case '0': pop(); break;                 // POP
        case '1': pop_mark(); break;            // POP_MARK
        case '2': push(top()); break;           // DUP
        case '}': push(make(PyObj::Kind::Dict)); break;   // EMPTY_DICT
        case ']': push(make(PyObj::Kind::List)); break;   // EMPTY_LIST
        case ')': push(make(PyObj::Kind::Tuple)); break;  // EMPTY_TUPLE
        case 0x8f: push(make(PyObj::Kind::Set)); break;   // EMPTY_SET
        case 'd': {                             // DICT
          auto d = make(PyObj::Kind::Dict);
          fill_dict(*d, pop_mark());
          push(d);
          break;
        }
        case 'l': {                             // LIST
          auto l = make(PyObj::Kind::List);
          l->items = pop_mark();
          push(l);
          break;
        }
        case 't': push(tuple(pop_mark())); break;  // TUPLE
        case 0x85: {                               // TUPLE1
          Obj a = pop();
          push(tuple({a}));
          break;
        }
        case 0x86: {                               // TUPLE2
          Obj b = pop(), a = pop();
          push(tuple({a, b}));
          break;
        }
        case 0x87: {                               // TUPLE3
          Obj c = pop(), b = pop(), a = pop();
          push(tuple({a, b, c}));
          break;
        }
        case 'q': memo_[u8()] = top(); break;                       // BINPUT
        case 'r': memo_[load_le<uint32_t>(bytes(4))] = top(); break;  // LONG_BINPUT
        case 0x94: memo_[memo_.size()] = top(); break;              // MEMOIZE
        case 'h': push(get(u8())); break;                           // BINGET
        case 'j': push(get(load_le<uint32_t>(bytes(4)))); break;    // LONG_BINGET
        case 'N': push(make(PyObj::Kind::None)); break;             // NONE
        case 0x88: push(boolean(true)); break;                      // NEWTRUE
        case 0x89: push(boolean(false)); break;                     // NEWFALSE
        case 'K': push(integer(u8())); break;                       // BININT1
        case 'M': push(integer(load_le<uint16_t>(bytes(2)))); break;  // BININT2
        case 'J': push(integer(load_le<int32_t>(bytes(4)))); break;   // BININT
        case 0x8a: push(long_int(u8())); break;                     // LONG1
        case 0x8b: push(long_int(load_le<uint32_t>(bytes(4)))); break;  // LONG4
        case 'G': {                                                 // BINFLOAT (big-endian)
          const char* b = bytes(8);
          uint64_t bits = 0;
          for (int k = 0; k < 8; ++k) bits = (bits << 8) | static_cast<uint8_t>(b[k]);
          auto o = make(PyObj::Kind::Float);
          std::memcpy(&o->f, &bits, 8);
          push(o);
          break;
        }
        case 0x8c: push(str(PyObj::Kind::Str, u8())); break;                          // SHORT_BINUNICODE
        case 'X': push(str(PyObj::Kind::Str, load_le<uint32_t>(bytes(4)))); break;     // BINUNICODE
        case 0x8d: push(str(PyObj::Kind::Str, load_le<uint64_t>(bytes(8)))); break;    // BINUNICODE8
        case 'U': push(str(PyObj::Kind::Str, u8())); break;                           // SHORT_BINSTRING
        case 'T': push(str(PyObj::Kind::Str, load_le<uint32_t>(bytes(4)))); break;     // BINSTRING
        case 'C': push(str(PyObj::Kind::Bytes, u8())); break;                         // SHORT_BINBYTES
        case 'B': push(str(PyObj::Kind::Bytes, load_le<uint32_t>(bytes(4)))); break;   // BINBYTES
        case 'c': {                                                 // GLOBAL "module\nname\n"
          const std::string module = line(), name = line();
          push(global(module, name));
          break;
        }
        case 0x93: {                                                // STACK_GLOBAL
          Obj name = pop(), module = pop();
          if (name->kind != PyObj::Kind::Str || module->kind != PyObj::Kind::Str)
            error("STACK_GLOBAL of non-strings");
          push(global(module->s, name->s));
          break;
        }
        case 'R': {                                                 // REDUCE
          Obj args = pop(), callable = pop();
          push(reduce(callable, args));
          break;
        }
        case 0x81: {                                                // NEWOBJ
          Obj args = pop(), cls = pop();
          push(opaque(cls));
          break;
        }
        case 'b': pop(); break;  // BUILD: the state of an OrderedDict (_metadata) or an opaque object
        case 's': {                                                 // SETITEM
          Obj v = pop(), k = pop();
          Obj d = top();
          if (d->kind == PyObj::Kind::Dict) d->dict.emplace_back(k, v);
          else if (d->kind != PyObj::Kind::Opaque) error(std::string("SETITEM on a ") + kind_name(d->kind));
          break;
        }
        case 'u': {                                                 // SETITEMS
          std::vector<Obj> kv = pop_mark();
          Obj d = top();
          if (d->kind == PyObj::Kind::Dict) fill_dict(*d, std::move(kv));
          else if (d->kind != PyObj::Kind::Opaque) error(std::string("SETITEMS on a ") + kind_name(d->kind));
          break;
        }
        case 'a': {                                                 // APPEND
          Obj v = pop();
          append(top(), {v});
          break;
        }
        case 'e': {                                                 // APPENDS
          std::vector<Obj> vs = pop_mark();
          append(top(), std::move(vs));
          break;
        }
        case 0x90: {                                                // ADDITEMS
          std::vector<Obj> vs = pop_mark();
          Obj s = top();
          if (s->kind != PyObj::Kind::Set) error("ADDITEMS on a non-set");
          for (Obj& v : vs) s->items.push_back(std::move(v));
          break;
        }
        case 0x91: {                                                // FROZENSET
          auto s = make(PyObj::Kind::Set);
          s->items = pop_mark();
          push(s);
          break;
        }
        case 'Q': push(persistent_load(pop())); break;              // BINPERSID
        default: {
          char msg[160];
          std::snprintf(msg, sizeof msg, "unsupported pickle opcode 0x%02x%s at offset %zu", op,
                        op >= 0x20 && op < 0x7f ? (std::string(" ('") + char(op) + "')").c_str() : "",
                        op_at_);
          throw CheckpointError(where_ + ": " + msg);
        }
      }
    }
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    throw CheckpointError(where_ + ": malformed pickle at offset " + std::to_string(op_at_) + ": " + what);
  }
  const char* bytes(size_t k) {
    if (k > n_ - pos_) error("truncated (needs " + std::to_string(k) + " more bytes)");
    const char* b = p_ + pos_;
    pos_ += k;
    return b;
  }
  uint8_t u8() { return static_cast<uint8_t>(*bytes(1)); }
  std::string line() {
    const char* start = p_ + pos_;
    const void* nl = std::memchr(start, '\n', n_ - pos_);
    if (!nl) error("unterminated GLOBAL");
    const size_t len = static_cast<const char*>(nl) - start;
    pos_ += len + 1;
    return std::string(start, len);
  }
  void push(Obj o) { stack_.push_back(std::move(o)); }
  Obj pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() == marks_.back())) error("stack underflow");
    Obj o = std::move(stack_.back());
    stack_.pop_back();
    return o;
  }
  const Obj& top() const {
    if (stack_.empty()) error("empty stack");
    return stack_.back();
  }
  std::vector<Obj> pop_mark() {
    if (marks_.empty()) error("no MARK");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Obj> out(std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(m)),
                         std::make_move_iterator(stack_.end()));
    stack_.resize(m);
    return out;
  }
  Obj get(uint64_t k) const {
    auto it = memo_.find(k);
    if (it == memo_.end()) error("memo key " + std::to_string(k) + " not defined");
    return it->second;
  }
  void fill_dict(PyObj& d, std::vector<Obj> kv) {
    if (kv.size() % 2) error("odd number of items for a dict");
    for (size_t k = 0; k < kv.size(); k += 2) d.dict.emplace_back(std::move(kv[k]), std::move(kv[k + 1]));
  }
  void append(const Obj& l, std::vector<Obj> vs) {
    if (l->kind == PyObj::Kind::List)
      for (Obj& v : vs) l->items.push_back(std::move(v));
    else if (l->kind != PyObj::Kind::Opaque) error(std::string("APPEND on a ") + kind_name(l->kind));
  }
  static Obj tuple(std::vector<Obj> items) {
    auto t = make(PyObj::Kind::Tuple);
    t->items = std::move(items);
    return t;
  }
  static Obj boolean(bool b) {
    auto o = make(PyObj::Kind::Bool);
    o->i = b;
    return o;
  }
  static Obj integer(int64_t v) {
    auto o = make(PyObj::Kind::Int);
    o->i = v;
    return o;
  }
  Obj long_int(uint64_t len) {  // little-endian two's complement
    if (len > 8) error("integer of " + std::to_string(len) + " bytes");
    const char* b = bytes(static_cast<size_t>(len));
    uint64_t v = 0;
    for (uint64_t k = 0; k < len; ++k) v |= static_cast<uint64_t>(static_cast<uint8_t>(b[k])) << (8 * k);
    if (len > 0 && len < 8 && (static_cast<uint8_t>(b[len - 1]) & 0x80)) v |= ~uint64_t{0} << (8 * len);
    return integer(static_cast<int64_t>(v));
  }
  Obj str(PyObj::Kind kind, uint64_t len) {
    if (len > n_) error("string of " + std::to_string(len) + " bytes");
    auto o = make(kind);
    o->s.assign(bytes(static_cast<size_t>(len)), static_cast<size_t>(len));
    return o;
  }
  static Obj global(const std::string& module, const std::string& name) {
    auto g = make(PyObj::Kind::Global);
    g->s = module;
    g->s2 = name;
    return g;
  }
  static Obj opaque(const Obj& what) {
    auto o = make(PyObj::Kind::Opaque);
    if (what->kind == PyObj::Kind::Global) o->s = what->s + "." + what->s2;
    return o;
  }

  int64_t as_int(const Obj& o, const char* what) const {
    if (o->kind != PyObj::Kind::Int) error(std::string(what) + " is a " + kind_name(o->kind) + ", not an int");
    return o->i;
  }
  std::vector<int64_t> int_tuple(const Obj& o, const char* what) const {
    if (o->kind != PyObj::Kind::Tuple && o->kind != PyObj::Kind::List)
      error(std::string(what) + " is a " + kind_name(o->kind) + ", not a tuple");
    std::vector<int64_t> v;
    for (const Obj& x : o->items) v.push_back(as_int(x, what));
    return v;
  }

  // ('storage', storage_type, key, location, numel)
  Obj persistent_load(const Obj& pid) {
    if (pid->kind != PyObj::Kind::Tuple || pid->items.size() != 5 ||
        pid->items[0]->kind != PyObj::Kind::Str || pid->items[0]->s != "storage")
      error("persistent id is not ('storage', type, key, location, numel)");
    const Obj& type = pid->items[1];
    if (type->kind != PyObj::Kind::Global || type->s != "torch")
      error("persistent id with a storage type that is not a torch global");
    if (!storage_type(type->s2)) error("unknown storage type torch." + type->s2);
    const Obj& key = pid->items[2];
    if (key->kind != PyObj::Kind::Str) error("storage key is not a string");
    auto st = make(PyObj::Kind::Storage);
    st->s = type->s2;
    st->s2 = key->s;
    st->i = as_int(pid->items[4], "storage numel");
    if (st->i < 0) error("negative storage size");
    return st;
  }

  Obj reduce(const Obj& callable, const Obj& args) {
    if (callable->kind != PyObj::Kind::Global) return opaque(callable);
    const std::string fn = callable->s + "." + callable->s2;
    if (args->kind != PyObj::Kind::Tuple) error(fn + " called with a " + kind_name(args->kind));
    const std::vector<Obj>& a = args->items;
    if (fn == "collections.OrderedDict" || fn == "builtins.dict") {
      auto d = make(PyObj::Kind::Dict);
      if (a.size() == 1 && a[0]->kind == PyObj::Kind::List)  // OrderedDict([(k, v), ...])
        for (const Obj& kv : a[0]->items) {
          if ((kv->kind != PyObj::Kind::Tuple && kv->kind != PyObj::Kind::List) || kv->items.size() != 2)
            error(fn + " of a list that is not of pairs");
          d->dict.emplace_back(kv->items[0], kv->items[1]);
        }
      else if (!a.empty()) error(fn + " with unexpected arguments");
      return d;
    }
    if (fn == "torch._utils._rebuild_tensor_v2" || fn == "torch._utils._rebuild_tensor") {
      // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
      if (a.size() < 4) error(fn + " with " + std::to_string(a.size()) + " arguments");
      if (a[0]->kind != PyObj::Kind::Storage) error(fn + " of a " + std::string(kind_name(a[0]->kind)) + ", not a storage");
      auto t = make(PyObj::Kind::Tensor);
      t->tensor = std::make_shared<TorchTensorInfo>();
      TorchTensorInfo& info = *t->tensor;
      info.storage_type = a[0]->s;
      info.dtype = storage_type(a[0]->s)->dtype;
      info.storage_key = a[0]->s2;
      info.storage_numel = a[0]->i;
      info.storage_offset = as_int(a[1], "storage offset");
      info.shape = int_tuple(a[2], "tensor size");
      info.stride = int_tuple(a[3], "tensor stride");
      if (info.shape.size() != info.stride.size()) error(fn + ": size and stride of different lengths");
      return t;
    }
    if (fn == "torch._utils._rebuild_parameter" || fn == "torch._utils._rebuild_parameter_with_state") {
      if (a.empty() || a[0]->kind != PyObj::Kind::Tensor) error(fn + " of something other than a tensor");
      return a[0];
    }
    if (fn == "torch._tensor._rebuild_from_type_v2" || fn == "torch._tensor._rebuild_from_type") {
      // (func, new_type, args, state): a tensor subclass; rebuild the plain tensor
      if (a.size() < 3) error(fn + " with too few arguments");
      Obj inner = reduce(a[0], a[2]);
      return inner;
    }
    return opaque(callable);
  }

  std::string where_;
  const char* p_;
  size_t n_, pos_ = 0, op_at_ = 0;
  std::vector<Obj> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Obj> memo_;
};

}  // namespace

bool TorchTensorInfo::contiguous() const {
  int64_t expect = 1;
  for (size_t k = shape.size(); k-- > 0;) {
    if (shape[k] == 1) continue;
    if (stride[k] != expect) return false;
    expect *= shape[k];
  }
  return true;
}

TorchCheckpoint::TorchCheckpoint(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(path, std::string("cannot stat: ") + std::strerror(err));
  }
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ == 0) {
    ::close(fd);
    fail(path, "empty file (not a torch.save archive)");
  }
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  if (p == MAP_FAILED) fail(path, std::string("cannot map: ") + std::strerror(map_errno));
  const uint64_t mapped = size_;
  map_ = std::shared_ptr<void>(p, [mapped](void* q) { ::munmap(q, mapped); });
  data_ = static_cast<const char*>(p);

  // ---- end of central directory (ZIP64 when the locator precedes it) ----
  const bool pickle_start = size_ >= 2 && static_cast<uint8_t>(data_[0]) == 0x80;
  const bool zip_start = size_ >= 4 && load_le<uint32_t>(data_) == 0x04034b50;
  if (size_ < 22) {
    fail(path, zip_start ? "truncated zip archive (no end-of-central-directory record)"
                         : "not a zip archive (too short to be a torch.save file)");
  }
  int64_t eocd = -1;
  const uint64_t lowest = size_ >= 22 + 65535 ? size_ - 22 - 65535 : 0;
  for (uint64_t k = size_ - 22 + 1; k-- > lowest;)
    if (load_le<uint32_t>(data_ + k) == 0x06054b50) {
      eocd = static_cast<int64_t>(k);
      break;
    }
  if (eocd < 0) {
    if (zip_start) fail(path, "truncated zip archive (no end-of-central-directory record)");
    if (pickle_start)
      fail(path, "the legacy torch.save format (torch < 1.6 or _use_new_zipfile_serialization=False), "
                 "which glmrt does not read; re-save it with torch >= 1.6");
    fail(path, "not a zip archive (no end-of-central-directory record): not a torch.save file");
  }
  const char* e = data_ + eocd;
  uint64_t count = load_le<uint16_t>(e + 10), cd_size = load_le<uint32_t>(e + 12),
           cd_offset = load_le<uint32_t>(e + 16);
  if (eocd >= 20 && load_le<uint32_t>(data_ + eocd - 20) == 0x07064b50) {
    const uint64_t z = load_le<uint64_t>(data_ + eocd - 20 + 8);
    if (z + 56 > size_ || load_le<uint32_t>(data_ + z) != 0x06064b50)
      fail(path, "bad ZIP64 end-of-central-directory locator (truncated or corrupt)");
    count = load_le<uint64_t>(data_ + z + 32);
    cd_size = load_le<uint64_t>(data_ + z + 40);
    cd_offset = load_le<uint64_t>(data_ + z + 48);
  } else if (count == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_offset == 0xFFFFFFFFu) {
    fail(path, "ZIP64 sizes without a ZIP64 end-of-central-directory locator (corrupt)");
  }
  if (cd_offset > size_ || cd_size > size_ - cd_offset)
    fail(path, "the zip central directory lies outside the file (truncated)");

  // ---- central directory ----
  std::vector<std::pair<std::string, Entry>> entries;
  uint64_t at = cd_offset;
  for (uint64_t k = 0; k < count; ++k) {
    if (at + 46 > cd_offset + cd_size || load_le<uint32_t>(data_ + at) != 0x02014b50)
      fail(path, "corrupt zip central directory (entry " + std::to_string(k) + ")");
    const char* c = data_ + at;
    const uint16_t flags = load_le<uint16_t>(c + 8), method = load_le<uint16_t>(c + 10);
    uint64_t csize = load_le<uint32_t>(c + 20), usize = load_le<uint32_t>(c + 24);
    const uint16_t n_name = load_le<uint16_t>(c + 28), n_extra = load_le<uint16_t>(c + 30),
                   n_comment = load_le<uint16_t>(c + 32);
    uint64_t local = load_le<uint32_t>(c + 42);
    if (at + 46 + n_name + n_extra + n_comment > cd_offset + cd_size)
      fail(path, "corrupt zip central directory (entry " + std::to_string(k) + ")");
    std::string name(c + 46, n_name);
    // ZIP64 extended information: the 64-bit values of the fields that hold 0xFFFFFFFF, in order
    const char* x = c + 46 + n_name;
    for (uint64_t xo = 0; xo + 4 <= n_extra;) {
      const uint16_t id = load_le<uint16_t>(x + xo), len = load_le<uint16_t>(x + xo + 2);
      if (xo + 4 + len > n_extra) fail(path, name + ": corrupt zip extra field");
      if (id == 0x0001) {
        const char* v = x + xo + 4;
        uint64_t used = 0;
        auto next = [&](uint64_t& field) {
          if (field != 0xFFFFFFFFu) return;
          if (used + 8 > len) fail(path, name + ": short ZIP64 extra field");
          field = load_le<uint64_t>(v + used);
          used += 8;
        };
        next(usize);
        next(csize);
        next(local);
      }
      xo += 4 + uint64_t{len};
    }
    if (flags & 0x1) fail(path, name + ": encrypted zip entry");
    if (method != 0)
      fail(path, name + ": compressed zip entry (method " + std::to_string(method) +
                     (method == 8 ? ", deflate" : "") +
                     "); torch.save stores entries uncompressed and glmrt reads only those "
                     "(was the file re-zipped?)");
    if (csize != usize) fail(path, name + ": stored entry with different sizes");
    // the data follows the local header, whose name and extra lengths may differ from these
    if (local + 30 > size_ || load_le<uint32_t>(data_ + local) != 0x04034b50)
      fail(path, name + ": bad local header offset (truncated or corrupt)");
    const uint64_t begin = local + 30 + load_le<uint16_t>(data_ + local + 26) + load_le<uint16_t>(data_ + local + 28);
    if (begin > size_ || usize > size_ - begin)
      fail(path, name + ": " + std::to_string(usize) + " bytes at offset " + std::to_string(begin) +
                     " run past the end of the file (" + std::to_string(size_) + " bytes): truncated");
    entries.emplace_back(std::move(name), Entry{begin, usize});
    at += 46 + uint64_t{n_name} + n_extra + n_comment;
  }

  // ---- <archive>/data.pkl ----
  for (const auto& [name, en] : entries) {
    const size_t slash = name.find('/');
    if (slash != std::string::npos && name.substr(slash + 1) == "data.pkl") {
      prefix_ = name.substr(0, slash + 1);
      break;
    }
    if (name == "data.pkl") break;  // prefix "" (not written by torch, accepted)
  }
  for (auto& [name, en] : entries)
    if (name.compare(0, prefix_.size(), prefix_) == 0) entries_[name.substr(prefix_.size())] = en;
  if (!entries_.count("data.pkl"))
    fail(path, "no data.pkl in the zip archive: not a torch.save file");
  if (auto it = entries_.find("version"); it != entries_.end()) {
    version_.assign(data_ + it->second.offset, it->second.size);
    while (!version_.empty() && (version_.back() == '\n' || version_.back() == '\r')) version_.pop_back();
  }
  if (auto it = entries_.find("byteorder"); it != entries_.end()) {
    const std::string order(data_ + it->second.offset, it->second.size);
    if (order != "little") fail(path, "saved with byte order '" + order + "'; glmrt reads little-endian files only");
  }

  // ---- the object ----
  const Entry& pkl = entries_.at("data.pkl");
  Unpickler up(path + ": data.pkl", data_ + pkl.offset, pkl.size);
  const Obj root = up.load();
  if (root->kind != PyObj::Kind::Dict)
    fail(path, std::string("the saved object is a ") + kind_name(root->kind) + ", not a dict");
  const PyObj* sd = root.get();
  for (const auto& [k, v] : root->dict)
    if (k->kind == PyObj::Kind::Str && k->s == "module") {
      if (v->kind != PyObj::Kind::Dict)
        fail(path, std::string("\"module\" is a ") + kind_name(v->kind) + ", not a state dict");
      sd = v.get();
      break;
    }
  for (const auto& [k, v] : sd->dict) {
    if (k->kind != PyObj::Kind::Str || v->kind != PyObj::Kind::Tensor) continue;
    if (index_.count(k->s)) fail(path, "tensor " + k->s + " appears twice");
    TorchTensorInfo info = *v->tensor;
    info.name = k->s;
    index_[info.name] = tensors_.size();
    tensors_.push_back(std::move(info));
  }
}

std::vector<std::string> TorchCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const TorchTensorInfo& t : tensors_) out.push_back(t.name);
  return out;
}

const TorchTensorInfo* TorchCheckpoint::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TorchTensorInfo& TorchCheckpoint::info(const std::string& name) const {
  const TorchTensorInfo* t = find(name);
  if (!t) fail(path_, "no tensor " + name);
  return *t;
}

const TorchCheckpoint::Entry& TorchCheckpoint::entry(const std::string& name, const std::string& what) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) fail(path_, what + ": its storage " + prefix_ + name + " is not in the archive");
  return it->second;
}

Tensor TorchCheckpoint::tensor(const std::string& name) const {
  const TorchTensorInfo& t = info(name);
  const std::string what = "tensor " + name;
  const StorageType* type = storage_type(t.storage_type);
  if (!t.dtype)
    fail(path_, what + " is a torch." + t.storage_type + " tensor, which glmrt has no dtype for");
  const DType dtype = *t.dtype;
  const size_t es = type->element_size;
  const Entry& en = entry("data/" + t.storage_key, what);
  if (en.size != static_cast<uint64_t>(t.storage_numel) * es)
    fail(path_, what + ": storage " + t.storage_key + " holds " + std::to_string(en.size) +
                    " bytes, the pickle says " + std::to_string(t.storage_numel) + " elements of " +
                    std::to_string(es) + " bytes");
  const int64_t numel = shape_numel(t.shape);
  for (size_t k = 0; k < t.shape.size(); ++k)
    if (t.shape[k] < 0 || t.stride[k] < 0) fail(path_, what + ": negative size or stride");
  if (numel == 0) return Tensor::empty(t.shape, dtype);
  int64_t last = t.storage_offset;
  for (size_t k = 0; k < t.shape.size(); ++k) last += (t.shape[k] - 1) * t.stride[k];
  if (t.storage_offset < 0 || last >= t.storage_numel)
    fail(path_, what + " " + shape_str(t.shape) + " at offset " + std::to_string(t.storage_offset) +
                    " reaches element " + std::to_string(last) + " of a storage of " +
                    std::to_string(t.storage_numel));
  const char* base = data_ + en.offset + static_cast<uint64_t>(t.storage_offset) * es;
  if (t.contiguous()) {
    if (reinterpret_cast<uintptr_t>(base) % es == 0)
      return Tensor::wrap(const_cast<char*>(base), t.shape, dtype, map_);
    Tensor out = Tensor::empty(t.shape, dtype);
    std::memcpy(out.data(), base, out.nbytes());
    return out;
  }
  // Materialise a strided view row-major: copy runs along the last dimension.
  Tensor out = Tensor::empty(t.shape, dtype);
  char* dst = static_cast<char*>(out.data());
  const size_t nd = t.shape.size();
  const int64_t inner = t.shape[nd - 1], inner_stride = t.stride[nd - 1];
  std::vector<int64_t> idx(nd, 0);
  for (int64_t row = 0; row < numel / inner; ++row) {
    int64_t off = 0;
    for (size_t k = 0; k + 1 < nd; ++k) off += idx[k] * t.stride[k];
    const char* src = base + static_cast<uint64_t>(off) * es;
    if (inner_stride == 1) {
      std::memcpy(dst, src, static_cast<size_t>(inner) * es);
      dst += static_cast<size_t>(inner) * es;
    } else {
      for (int64_t j = 0; j < inner; ++j, dst += es) std::memcpy(dst, src + static_cast<uint64_t>(j * inner_stride) * es, es);
    }
    for (size_t k = nd - 1; k-- > 0;) {  // next index over the leading dimensions
      if (++idx[k] < t.shape[k]) break;
      idx[k] = 0;
    }
  }
  return out;
}

void TorchCheckpoint::release(const std::string& name) const {
  const TorchTensorInfo* t = find(name);
  if (!t) return;
  auto it = entries_.find("data/" + t->storage_key);
  if (it == entries_.end() || it->second.size == 0) return;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t begin = it->second.offset / page * page, end = it->second.offset + it->second.size;
  ::madvise(const_cast<char*>(data_) + begin, end - begin, MADV_DONTNEED);
}

}  // namespace glmrt
