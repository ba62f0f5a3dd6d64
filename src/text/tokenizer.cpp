#include "text/tokenizer.h"

#include <algorithm>
#include <queue>

#include "core/error.h"

namespace mixtral {
namespace {

constexpr std::string_view kSpaceSymbol = "\xe2\x96\x81";        // U+2581 ▁ stands for ' '
constexpr std::string_view kReplacementChar = "\xef\xbf\xbd";    // U+FFFD for invalid bytes
constexpr std::string_view kUnknownSurface = " \xe2\x81\x87 ";   // " ⁇ ", SentencePiece's <unk> text

// ---- UTF-8 ------------------------------------------------------------------------------------
// SentencePiece's DecodeUTF8 accepts exactly the well-formed sequences of Unicode Table 3-7:
// no overlongs (C0, C1, E0 80..9F, F0 80..8F), no surrogates (ED A0..BF), nothing past U+10FFFF
// (F4 90.., F5..FF). Only the second byte has a restricted range; later ones are any 80..BF.

// Length a lead byte announces and the allowed range of the byte after it; false for a byte
// that cannot start a character.
bool utf8_lead(uint8_t b0, int* len, uint8_t* lo, uint8_t* hi) {
  *lo = 0x80, *hi = 0xbf;
  if (b0 < 0x80) *len = 1;
  else if (b0 >= 0xc2 && b0 <= 0xdf) *len = 2;
  else if (b0 >= 0xe0 && b0 <= 0xef) *len = 3, *lo = b0 == 0xe0 ? 0xa0 : 0x80, *hi = b0 == 0xed ? 0x9f : 0xbf;
  else if (b0 >= 0xf0 && b0 <= 0xf4) *len = 4, *lo = b0 == 0xf0 ? 0x90 : 0x80, *hi = b0 == 0xf4 ? 0x8f : 0xbf;
  else return false;
  return true;
}

// Bytes of the valid character at p (n bytes available), or 0 when it is invalid or cut short.
int utf8_valid_len(const uint8_t* p, size_t n) {
  int len;
  uint8_t lo, hi;
  if (!utf8_lead(p[0], &len, &lo, &hi) || n < size_t(len)) return 0;
  if (len >= 2 && (p[1] < lo || p[1] > hi)) return 0;
  for (int i = 2; i < len; ++i)
    if ((p[i] & 0xc0) != 0x80) return 0;
  return len;
}

// True when p[0..n) is a proper prefix of some valid character: more bytes may still make it whole.
bool utf8_may_complete(const uint8_t* p, size_t n) {
  int len;
  uint8_t lo, hi;
  if (!utf8_lead(p[0], &len, &lo, &hi) || n >= size_t(len)) return false;
  if (n >= 2 && (p[1] < lo || p[1] > hi)) return false;
  for (size_t i = 2; i < n; ++i)
    if ((p[i] & 0xc0) != 0x80) return false;
  return true;
}

// Appends a run of raw bytes as SentencePiece's decoder does (ProcessBytePieces): each valid
// character as is, each byte that does not start one as U+FFFD.
void append_bytes_as_text(std::string_view bytes, std::string* out) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  for (size_t off = 0; off < bytes.size();) {
    const int len = utf8_valid_len(p + off, bytes.size() - off);
    if (len > 0) out->append(bytes.data() + off, size_t(len)), off += size_t(len);
    else out->append(kReplacementChar), off += 1;
  }
}

// "<0x4A>" → 0x4A; -1 unless it is exactly SentencePiece's ByteToPiece format (upper-case hex).
int parse_byte_piece(std::string_view s) {
  if (s.size() != 6 || s.substr(0, 3) != "<0x" || s[5] != '>') return -1;
  int v = 0;
  for (char c : s.substr(3, 2)) {
    if (c >= '0' && c <= '9') v = v * 16 + (c - '0');
    else if (c >= 'A' && c <= 'F') v = v * 16 + (c - 'A' + 10);
    else return -1;
  }
  return v;
}

}  // namespace

// ---- construction -----------------------------------------------------------------------------

Tokenizer::Tokenizer(Vocab vocab) : vocab_(std::move(vocab)) {
  const Vocab& v = vocab_;
  const size_t n = v.pieces.size();
  if (n == 0) fail("tokenizer", "empty vocabulary");
  if (v.scores.size() != n || v.types.size() != n) {
    fail("tokenizer", "vocabulary has " + std::to_string(n) + " pieces but " + std::to_string(v.scores.size()) +
                          " scores and " + std::to_string(v.types.size()) + " types");
  }
  if (n > size_t(INT32_MAX)) fail("tokenizer", "vocabulary too large");
  if (v.unk_id < 0 || size_t(v.unk_id) >= n) fail("tokenizer", "unk id " + std::to_string(v.unk_id) + " out of range");
  for (const auto& [name, id] : {std::pair{"bos", v.bos_id}, std::pair{"eos", v.eos_id}}) {
    if (id < -1 || id >= int32_t(n)) fail("tokenizer", std::string(name) + " id " + std::to_string(id) + " out of range");
  }

  byte_value_.assign(n, -1);
  byte_id_.fill(-1);
  for (size_t i = 0; i < n; ++i) {
    const std::string& p = v.pieces[i];
    const PieceType t = v.types[i];
    if (int32_t(t) < 1 || int32_t(t) > 6) fail("tokenizer", "piece " + std::to_string(i) + " has unknown type");
    if (p.empty()) fail("tokenizer", "piece " + std::to_string(i) + " is empty");
    // SentencePiece keeps two maps: BPE merges may only produce Normal/UserDefined/Unused pieces;
    // Control/Unknown/Byte pieces are found only when a whole final symbol equals them.
    const bool mergeable = t == PieceType::Normal || t == PieceType::UserDefined || t == PieceType::Unused;
    auto [it, fresh] = (mergeable ? mergeable_ : reserved_).emplace(p, int32_t(i));
    if (!fresh) {
      fail("tokenizer", "piece '" + p + "' is defined twice (ids " + std::to_string(it->second) + " and " +
                            std::to_string(i) + ")");
    }
    if (t == PieceType::UserDefined) user_defined_[uint8_t(p[0])].push_back(p);
    if (t == PieceType::Byte) {
      const int b = parse_byte_piece(p);
      if (b < 0) fail("tokenizer", "byte piece " + std::to_string(i) + " '" + p + "' is not of the form <0xXX>");
      byte_value_[i] = int16_t(b);
      byte_id_[size_t(b)] = int32_t(i);
    }
  }
  if (v.byte_fallback) {
    for (int b = 0; b < 256; ++b) {
      if (byte_id_[size_t(b)] < 0) fail("tokenizer", "byte_fallback is on but byte piece " + std::to_string(b) + " is missing");
    }
  }
  for (auto& list : user_defined_) {  // longest first, so the first hit is the longest match
    std::sort(list.begin(), list.end(), [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  }
}

// ---- encode -----------------------------------------------------------------------------------

// normalizer.cc with an identity charsmap: optionally drop leading spaces, prepend the dummy ▁,
// turn each ' ' into ▁ (dropping repeats when remove_extra_whitespaces), drop trailing ▁s.
// (SentencePiece also lets user-defined pieces bypass normalisation; with an identity
// normaliser that only matters for user-defined pieces containing a raw ' ', which do not occur.)
std::string Tokenizer::normalize(std::string_view in) const {
  std::string out;
  const bool collapse = vocab_.remove_extra_whitespaces;
  if (collapse) {
    while (!in.empty() && in.front() == ' ') in.remove_prefix(1);
  }
  if (in.empty()) return out;  // empty input encodes to nothing, without a dummy prefix
  out.reserve(in.size() * 3 + kSpaceSymbol.size());
  if (vocab_.add_dummy_prefix) out += kSpaceSymbol;
  bool prev_space = collapse;
  for (char c : in) {
    if (c != ' ') {
      out += c, prev_space = false;
    } else if (!prev_space) {
      out += kSpaceSymbol, prev_space = collapse;
    }
  }
  if (collapse) {  // note: also removes a literal trailing ▁ typed by the user, as SentencePiece does
    while (out.size() >= kSpaceSymbol.size() && std::string_view(out).ends_with(kSpaceSymbol)) {
      out.resize(out.size() - kSpaceSymbol.size());
    }
  }
  return out;
}

size_t Tokenizer::match_user_defined(std::string_view s) const {
  for (const std::string& p : user_defined_[uint8_t(s[0])]) {
    if (s.starts_with(p)) return p.size();
  }
  return 0;
}

int32_t Tokenizer::piece_to_id(std::string_view s) const {
  if (auto it = reserved_.find(s); it != reserved_.end()) return it->second;
  if (auto it = mergeable_.find(s); it != mergeable_.end()) return it->second;
  return -1;
}

bool Tokenizer::is_unknown(int32_t id) const {
  return id == vocab_.unk_id || vocab_.types[size_t(id)] == PieceType::Unknown;
}

// bpe_model.cc Model::Encode. Symbols form a linked list over the normalised text; the agenda
// holds candidate merges (adjacent pairs whose concatenation is a piece), best score first,
// leftmost first on ties. A popped candidate is stale when either side has changed since it
// was pushed (detected, as in SentencePiece, by an emptied side or a changed total length).
// Each merge pushes at most two new candidates, so the whole text costs O(n log n).
void Tokenizer::bpe(const std::string& norm, std::vector<int32_t>* out) const {
  struct Symbol {
    uint32_t begin, len;  // bytes of norm; len == 0 once merged into its left neighbour
    int32_t prev, next;   // -1 at the ends
    bool freeze;          // a user-defined piece: never merged
  };
  struct Pair {
    float score;
    int32_t left, right;
    uint32_t size;
  };
  struct Lower {  // priority_queue pops the greatest: higher score, then smaller left
    bool operator()(const Pair& a, const Pair& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };

  std::vector<Symbol> sym;
  sym.reserve(norm.size());
  for (size_t pos = 0; pos < norm.size();) {
    size_t len = user_defined_[uint8_t(norm[pos])].empty() ? 0 : match_user_defined(std::string_view(norm).substr(pos));
    const bool freeze = len > 0;
    if (!freeze) {  // one character (the text was validated, so the lead byte tells the length)
      int n;
      uint8_t lo, hi;
      utf8_lead(uint8_t(norm[pos]), &n, &lo, &hi);
      len = std::min<size_t>(size_t(n), norm.size() - pos);
    }
    const auto idx = int32_t(sym.size());
    sym.push_back({uint32_t(pos), uint32_t(len), idx - 1, -1, freeze});
    if (idx > 0) sym[size_t(idx) - 1].next = idx;
    pos += len;
  }
  if (sym.empty()) return;

  auto text_of = [&](const Symbol& s) { return std::string_view(norm).substr(s.begin, s.len); };
  // Merged Unused pieces, remembered so the final symbols can be split back (resegmentation).
  std::unordered_map<std::string, std::pair<std::string, std::string>> rev_merge;
  std::priority_queue<Pair, std::vector<Pair>, Lower> agenda;
  auto maybe_add = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0 || sym[size_t(l)].freeze || sym[size_t(r)].freeze) return;
    const Symbol& L = sym[size_t(l)];
    const Symbol& R = sym[size_t(r)];
    const std::string_view merged(norm.data() + L.begin, L.len + R.len);
    const auto it = mergeable_.find(merged);
    if (it == mergeable_.end()) return;
    agenda.push({vocab_.scores[size_t(it->second)], l, r, uint32_t(merged.size())});
    if (vocab_.types[size_t(it->second)] == PieceType::Unused) {
      rev_merge[std::string(merged)] = {std::string(text_of(L)), std::string(text_of(R))};
    }
  };
  for (size_t i = 1; i < sym.size(); ++i) maybe_add(int32_t(i - 1), int32_t(i));

  while (!agenda.empty()) {
    const Pair top = agenda.top();
    agenda.pop();
    Symbol& L = sym[size_t(top.left)];
    Symbol& R = sym[size_t(top.right)];
    if (L.len == 0 || R.len == 0 || L.len + R.len != top.size) continue;  // stale
    L.len += R.len;
    L.next = R.next;
    if (R.next >= 0) sym[size_t(R.next)].prev = top.left;
    R.len = 0;
    maybe_add(L.prev, top.left);
    maybe_add(top.left, L.next);
  }

  // Final symbols → ids (sentencepiece_processor.cc PopulateSentencePieceText). An Unused piece
  // is never emitted: it is split back into the two symbols it was merged from, recursively.
  bool prev_unk = false;
  auto emit = [&](auto&& self, std::string_view w) -> void {
    int32_t id = piece_to_id(w);
    if (id >= 0 && vocab_.types[size_t(id)] == PieceType::Unused) {
      if (auto it = rev_merge.find(std::string(w)); it != rev_merge.end()) {
        self(self, it->second.first);
        self(self, it->second.second);
        return;
      }
    }
    if (id < 0) id = vocab_.unk_id;
    const bool unk = is_unknown(id);
    if (unk && vocab_.byte_fallback) {
      for (char c : w) out->push_back(byte_id_[uint8_t(c)]);  // byte fallback: <0xXX> per byte
    } else if (!(unk && prev_unk)) {
      out->push_back(id);  // a run of unknown symbols collapses into one <unk>
    }
    prev_unk = unk;
  };
  for (int32_t i = 0; i != -1; i = sym[size_t(i)].next) emit(emit, text_of(sym[size_t(i)]));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos) const {
  const auto* p = reinterpret_cast<const uint8_t*>(text.data());
  for (size_t off = 0; off < text.size();) {
    const int len = utf8_valid_len(p + off, text.size() - off);
    if (len == 0) fail("text", "invalid UTF-8 at byte " + std::to_string(off));
    off += size_t(len);
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (add_bos && vocab_.bos_id >= 0) ids.push_back(vocab_.bos_id);
  bpe(normalize(text), &ids);
  return ids;
}

// ---- decode -----------------------------------------------------------------------------------

std::string Tokenizer::piece_surface(int32_t id, bool bos, bool* stripped) const {
  *stripped = false;
  const PieceType t = vocab_.types[size_t(id)];
  if (t == PieceType::Control) return "";  // <s>, </s>: invisible
  if (is_unknown(id)) return std::string(kUnknownSurface);
  std::string_view piece = vocab_.pieces[size_t(id)];
  // The dummy prefix: at the start of the text, one leading ▁ is dropped. SentencePiece drops
  // only one (so "▁▁" → " "); with remove_extra_whitespaces it keeps dropping until text appears.
  if (bos && (vocab_.add_dummy_prefix || vocab_.remove_extra_whitespaces) && piece.starts_with(kSpaceSymbol)) {
    piece.remove_prefix(kSpaceSymbol.size());
    *stripped = !vocab_.remove_extra_whitespaces;
  }
  std::string out;
  out.reserve(piece.size());
  for (size_t pos = 0; pos < piece.size();) {
    if (piece.substr(pos).starts_with(kSpaceSymbol)) out += ' ', pos += kSpaceSymbol.size();
    else out += piece[pos++];
  }
  return out;
}

// sentencepiece_processor.cc Decode: runs of byte pieces are gathered and turned into text
// together; before each other piece, "start of text" ends once a ▁ was dropped or anything
// was written.
std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string text, bytes;
  bool is_bos_ws = true, bos_ws_seen = false;
  for (const int32_t id : ids) {
    if (id < 0 || id >= n_vocab()) fail("decode", "token id " + std::to_string(id) + " out of range [0, " + std::to_string(n_vocab()) + ")");
    if (const int b = byte_value_of(id); b >= 0) {
      bytes += char(b);
      continue;
    }
    append_bytes_as_text(bytes, &text);
    bytes.clear();
    if (bos_ws_seen || !text.empty()) is_bos_ws = false;
    text += piece_surface(id, is_bos_ws, &bos_ws_seen);
  }
  append_bytes_as_text(bytes, &text);
  return text;
}

const std::string& Tokenizer::piece(int32_t id) const {
  if (id < 0 || id >= n_vocab()) fail("tokenizer", "token id " + std::to_string(id) + " out of range [0, " + std::to_string(n_vocab()) + ")");
  return vocab_.pieces[size_t(id)];
}

std::optional<int32_t> Tokenizer::byte_token(uint8_t b) const {
  if (byte_id_[b] < 0) return std::nullopt;
  return byte_id_[b];
}

bool Tokenizer::is_control(int32_t id) const {
  return id >= 0 && id < n_vocab() && vocab_.types[size_t(id)] == PieceType::Control;
}

// ---- streaming decode -------------------------------------------------------------------------
// Same state machine as decode(), but a byte run is emitted as soon as its characters are
// certain: a valid character goes out at once, a byte that can no longer start one becomes
// U+FFFD at once, and only a prefix that more bytes could complete is held back.

void StreamDecoder::emit(std::string_view s, std::string* out) {
  out->append(s);
  if (!s.empty()) any_output_ = true;
}

std::string StreamDecoder::feed(int32_t id) {
  if (id < 0 || id >= tok_.n_vocab()) fail("decode", "token id " + std::to_string(id) + " out of range [0, " + std::to_string(tok_.n_vocab()) + ")");
  std::string out;
  if (const int b = tok_.byte_value_of(id); b >= 0) {
    pending_ += char(b);
    const auto* p = reinterpret_cast<const uint8_t*>(pending_.data());
    size_t off = 0;
    while (off < pending_.size()) {
      const int len = utf8_valid_len(p + off, pending_.size() - off);
      if (len > 0) {
        emit(std::string_view(pending_).substr(off, size_t(len)), &out);
        off += size_t(len);
      } else if (utf8_may_complete(p + off, pending_.size() - off)) {
        break;  // wait for the rest of this character
      } else {
        emit(kReplacementChar, &out);
        off += 1;
      }
    }
    pending_.erase(0, off);
    return out;
  }
  out = flush();  // the byte run ends here
  if (bos_ws_seen_ || any_output_) is_bos_ws_ = false;
  emit(tok_.piece_surface(id, is_bos_ws_, &bos_ws_seen_), &out);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  append_bytes_as_text(pending_, &out);
  pending_.clear();
  if (!out.empty()) any_output_ = true;
  return out;
}

}  // namespace mixtral
