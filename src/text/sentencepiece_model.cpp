#include "text/sentencepiece_model.h"

#include <cstring>
#include <string_view>

#include "core/error.h"
#include "core/mapped_file.h"

namespace mixtral {
namespace {

// ---- protobuf wire format ---------------------------------------------------------------------
// A message is a sequence of (tag varint = field << 3 | wire type, value). Wire types used by
// ModelProto: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32. Every read checks the bounds,
// so a truncated or hostile file ends in an Error, never an out-of-bounds read.
enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLen = 2, kFixed32 = 5 };

class WireReader {
 public:
  WireReader(const uint8_t* begin, const uint8_t* end, const std::string& where, const char* msg)
      : p_(begin), end_(end), where_(where), msg_(msg) {}

  bool done() const { return p_ >= end_; }

  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ >= end_) bad("truncated varint");
      const uint8_t b = *p_++;
      v |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    bad("varint longer than 10 bytes");
  }

  // Reads a tag; returns the field number and stores the wire type.
  uint32_t tag(uint32_t* wire) {
    const uint64_t t = varint();
    *wire = uint32_t(t & 7);
    if ((t >> 3) == 0 || (t >> 3) > 0x1fffffff) bad("invalid field number " + std::to_string(t >> 3));
    return uint32_t(t >> 3);
  }

  std::string_view bytes() {
    const uint64_t n = varint();
    if (n > uint64_t(end_ - p_)) {
      bad("length-delimited field of " + std::to_string(n) + " bytes runs past the end (" +
          std::to_string(end_ - p_) + " left)");
    }
    std::string_view s(reinterpret_cast<const char*>(p_), size_t(n));
    p_ += n;
    return s;
  }

  float fixed32_float() {
    if (end_ - p_ < 4) bad("truncated fixed32");
    uint32_t u = uint32_t(p_[0]) | uint32_t(p_[1]) << 8 | uint32_t(p_[2]) << 16 | uint32_t(p_[3]) << 24;
    p_ += 4;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }

  void skip(uint32_t wire) {
    switch (wire) {
      case kVarint: varint(); return;
      case kFixed64: advance(8); return;
      case kLen: bytes(); return;
      case kFixed32: advance(4); return;
      default: bad("unsupported wire type " + std::to_string(wire));  // groups (3, 4) or junk
    }
  }

  void expect(uint32_t field, uint32_t wire, uint32_t want) {
    if (wire != want) {
      bad("field " + std::to_string(field) + " has wire type " + std::to_string(wire) +
          ", expected " + std::to_string(want));
    }
  }

  [[noreturn]] void bad(const std::string& what) const {
    fail(where_, std::string("not a valid SentencePiece model (") + msg_ + ": " + what + ")");
  }

 private:
  void advance(size_t n) {
    if (size_t(end_ - p_) < n) bad("truncated fixed-size field");
    p_ += n;
  }

  const uint8_t* p_;
  const uint8_t* end_;
  const std::string& where_;
  const char* msg_;
};

WireReader sub_reader(std::string_view s, const std::string& where, const char* msg) {
  const auto* b = reinterpret_cast<const uint8_t*>(s.data());
  return WireReader(b, b + s.size(), where, msg);
}

// ---- messages ----------------------------------------------------------------------------------

struct TrainerSpec {
  int64_t model_type = 1;  // UNIGRAM is the proto default: a model must say BPE explicitly
  bool treat_whitespace_as_suffix = false;
  bool byte_fallback = false;
  int32_t unk_id = 0, bos_id = 1, eos_id = 2;
};

struct NormalizerSpec {
  std::string name;
  size_t charsmap_size = 0;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
};

void parse_piece(std::string_view msg, const std::string& path, Vocab* v) {
  WireReader r = sub_reader(msg, path, "SentencePiece");
  std::string piece;
  float score = 0.0f;
  uint64_t type = uint64_t(PieceType::Normal);
  while (!r.done()) {
    uint32_t wire;
    const uint32_t field = r.tag(&wire);
    if (field == 1) {
      r.expect(field, wire, kLen);
      piece = std::string(r.bytes());
    } else if (field == 2) {
      r.expect(field, wire, kFixed32);
      score = r.fixed32_float();
    } else if (field == 3) {
      r.expect(field, wire, kVarint);
      type = r.varint();
    } else {
      r.skip(wire);
    }
  }
  const std::string where = path + ": piece " + std::to_string(v->pieces.size());
  if (type < 1 || type > 6) fail(where, "unknown piece type " + std::to_string(type));
  // SentencePiece refuses these too (model_interface.cc InitializePieces).
  if (piece.empty()) fail(where, "empty piece");
  if (piece.find('\0') != std::string::npos) fail(where, "piece contains a NUL byte");
  v->pieces.push_back(std::move(piece));
  v->scores.push_back(score);
  v->types.push_back(PieceType(int32_t(type)));
}

TrainerSpec parse_trainer(std::string_view msg, const std::string& path) {
  WireReader r = sub_reader(msg, path, "TrainerSpec");
  TrainerSpec t;
  while (!r.done()) {
    uint32_t wire;
    const uint32_t field = r.tag(&wire);
    switch (field) {
      case 3: case 24: case 35: case 40: case 41: case 42: {
        r.expect(field, wire, kVarint);
        const uint64_t x = r.varint();
        // int32 fields: negative values are sign-extended 10-byte varints; truncation recovers them.
        if (field == 3) t.model_type = int64_t(x);
        if (field == 24) t.treat_whitespace_as_suffix = x != 0;
        if (field == 35) t.byte_fallback = x != 0;
        if (field == 40) t.unk_id = int32_t(uint32_t(x));
        if (field == 41) t.bos_id = int32_t(uint32_t(x));
        if (field == 42) t.eos_id = int32_t(uint32_t(x));
        break;
      }
      default: r.skip(wire);
    }
  }
  return t;
}

NormalizerSpec parse_normalizer(std::string_view msg, const std::string& path) {
  WireReader r = sub_reader(msg, path, "NormalizerSpec");
  NormalizerSpec n;
  while (!r.done()) {
    uint32_t wire;
    const uint32_t field = r.tag(&wire);
    if (field == 1 || field == 2) {
      r.expect(field, wire, kLen);
      const std::string_view s = r.bytes();
      if (field == 1) n.name = std::string(s);
      else n.charsmap_size = s.size();
    } else if (field >= 3 && field <= 5) {
      r.expect(field, wire, kVarint);
      const bool b = r.varint() != 0;
      if (field == 3) n.add_dummy_prefix = b;
      if (field == 4) n.remove_extra_whitespaces = b;
      if (field == 5) n.escape_whitespaces = b;
    } else {
      r.skip(wire);
    }
  }
  return n;
}

const char* model_type_name(int64_t t) {
  switch (t) {
    case 1: return "UNIGRAM";
    case 2: return "BPE";
    case 3: return "WORD";
    case 4: return "CHAR";
    default: return "unknown";
  }
}

}  // namespace

Vocab load_sentencepiece_model(const std::string& path) {
  const MappedFile file(path);  // throws Error naming the path when it cannot be read
  if (file.size() == 0) fail(path, "empty file, not a SentencePiece model");
  WireReader r(file.data(), file.data() + file.size(), path, "ModelProto");

  Vocab v;
  TrainerSpec trainer;
  NormalizerSpec normalizer;
  bool have_trainer = false;
  while (!r.done()) {
    uint32_t wire;
    const uint32_t field = r.tag(&wire);
    if (field >= 1 && field <= 3) {
      r.expect(field, wire, kLen);
      const std::string_view msg = r.bytes();
      if (field == 1) {
        parse_piece(msg, path, &v);
      } else if (field == 2) {
        trainer = parse_trainer(msg, path);
        have_trainer = true;
      } else {
        normalizer = parse_normalizer(msg, path);
      }
    } else {
      r.skip(wire);
    }
  }

  if (v.pieces.empty()) fail(path, "not a valid SentencePiece model (no pieces)");
  if (!have_trainer) fail(path, "not a valid SentencePiece model (no trainer_spec)");
  if (trainer.model_type != 2) {
    fail(path, std::string("SentencePiece model type ") + model_type_name(trainer.model_type) + " (" +
                   std::to_string(trainer.model_type) + ") is not supported; only BPE is");
  }
  if (trainer.treat_whitespace_as_suffix) fail(path, "treat_whitespace_as_suffix is not supported");
  if (!normalizer.escape_whitespaces) fail(path, "escape_whitespaces=false is not supported");
  // A precompiled charsmap means NFKC-like rewriting (e.g. "nmt_nfkc"); only identity is implemented.
  if (normalizer.charsmap_size != 0) {
    fail(path, "normaliser '" + normalizer.name + "' (a precompiled charsmap) is not supported; only identity is");
  }

  // SentencePiece takes <unk> from the piece whose type is UNKNOWN and requires exactly one.
  int32_t unk = -1;
  for (size_t i = 0; i < v.types.size(); ++i) {
    if (v.types[i] != PieceType::Unknown) continue;
    if (unk >= 0) fail(path, "two UNKNOWN pieces (ids " + std::to_string(unk) + " and " + std::to_string(i) + ")");
    unk = int32_t(i);
  }
  if (unk < 0) fail(path, "no UNKNOWN (<unk>) piece");
  const auto n = int32_t(v.pieces.size());
  auto check_special = [&](const char* name, int32_t id) {
    if (id < -1 || id >= n) fail(path, std::string(name) + " " + std::to_string(id) + " is out of range");
  };
  check_special("bos_id", trainer.bos_id);
  check_special("eos_id", trainer.eos_id);

  v.unk_id = unk;
  v.bos_id = trainer.bos_id;
  v.eos_id = trainer.eos_id;
  v.byte_fallback = trainer.byte_fallback;
  v.add_dummy_prefix = normalizer.add_dummy_prefix;
  v.remove_extra_whitespaces = normalizer.remove_extra_whitespaces;
  return v;
}

}  // namespace mixtral
