// Tokenizer tests: byte-exact agreement with the SentencePiece library (283 reference cases),
// mistral-common's chat encoding, streaming decode == batch decode, hostile model files, bad
// UTF-8, and a long text against a naive BPE written independently in this file.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <unistd.h>

#include "core/error.h"
#include "test_util.h"
#include "text/chat.h"
#include "text/sentencepiece_model.h"
#include "text/tokenizer.h"
#include "tokenizer_cases.h"

namespace mixtral {
namespace {

using json = nlohmann::json;
using mixtral::testing::shared_dir;

std::string tokenizers_dir() { return shared_dir() + "/tokenizers"; }
std::string v1_model_path() { return tokenizers_dir() + "/tokenizer.model.v1"; }
std::string v3_model_path() { return tokenizers_dir() + "/mistral_instruct_tokenizer_240323.model.v3"; }

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(data.data(), std::streamsize(data.size()));
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("mixtral_tok_" + std::to_string(::getpid()) + "_" + name)).string();
}

// Loaded once: 32000 pieces take a few milliseconds, but many tests share it.
const Tokenizer& v1() {
  static const Tokenizer tok(load_sentencepiece_model(v1_model_path()));
  return tok;
}

std::string stream_decode(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  StreamDecoder dec(tok);
  std::string out;
  for (int32_t id : ids) out += dec.feed(id);
  return out + dec.flush();
}

std::vector<std::string> pieces_of(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::vector<std::string> out;
  for (int32_t id : ids) out.push_back(tok.piece(id));
  return out;
}

}  // namespace

// ---- the reusable reference check -------------------------------------------------------------

void testing::check_tokenizer_against_cases(const Tokenizer& tok) {
  const std::string path = tokenizers_dir() + "/mistral-v1-cases.jsonl";
  REQUIRE_PATH(path);
  std::ifstream in(path);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const json c = json::parse(line);
    ++n;
    const std::string text = c["text"];
    SCOPED_TRACE("case " + std::to_string(c["id"].get<int>()) + " (" + c["category"].get<std::string>() + "): " +
                 json(text).dump());
    const auto want_ids = c["ids"].get<std::vector<int32_t>>();
    const auto ids = tok.encode(text, /*add_bos=*/false);
    EXPECT_EQ(ids, want_ids);
    EXPECT_EQ(pieces_of(tok, want_ids), c["pieces"].get<std::vector<std::string>>());
    const std::string decoded = tok.decode(want_ids);
    EXPECT_EQ(decoded, c["decoded"].get<std::string>());
    EXPECT_EQ(stream_decode(tok, want_ids), decoded);
    if (c["roundtrip"].get<bool>()) {
      EXPECT_EQ(tok.decode(ids), text);
    }
    // With BOS the same ids follow it, and <s> decodes to nothing.
    std::vector<int32_t> with_bos = {tok.bos()};
    with_bos.insert(with_bos.end(), want_ids.begin(), want_ids.end());
    EXPECT_EQ(tok.encode(text, /*add_bos=*/true), with_bos);
    EXPECT_EQ(tok.decode(with_bos), decoded);
  }
  EXPECT_EQ(n, 283) << "the case file changed";
}

namespace {

// ---- the model file ---------------------------------------------------------------------------

TEST(Tokenizer, LoadsMixtralV1Model) {
  REQUIRE_PATH(v1_model_path());
  const Vocab& v = v1().vocab();
  EXPECT_EQ(v1().n_vocab(), 32000);
  EXPECT_EQ(v.unk_id, 0);
  EXPECT_EQ(v1().bos(), 1);
  EXPECT_EQ(v1().eos(), 2);
  EXPECT_EQ(v1().piece(0), "<unk>");
  EXPECT_EQ(v1().piece(1), "<s>");
  EXPECT_EQ(v1().piece(2), "</s>");
  EXPECT_TRUE(v1().is_control(1));
  EXPECT_TRUE(v1().is_control(2));
  EXPECT_FALSE(v1().is_control(0));
  for (int b = 0; b < 256; ++b) {
    ASSERT_EQ(v1().byte_token(uint8_t(b)), 3 + b);
    char want[8];
    std::snprintf(want, sizeof want, "<0x%02X>", b);
    EXPECT_EQ(v1().piece(3 + b), want);
    EXPECT_EQ(v.types[size_t(3 + b)], PieceType::Byte);
  }
  EXPECT_TRUE(v.add_dummy_prefix);
  EXPECT_FALSE(v.remove_extra_whitespaces);
  EXPECT_TRUE(v.byte_fallback);
  EXPECT_THROW(v1().piece(32000), Error);
  EXPECT_THROW(v1().piece(-1), Error);
}

TEST(Tokenizer, MatchesSentencePieceOnAllReferenceCases) {
  REQUIRE_PATH(v1_model_path());
  testing::check_tokenizer_against_cases(v1());
}

TEST(Tokenizer, RejectsGarbageAndTruncatedModels) {
  REQUIRE_PATH(v1_model_path());
  const std::string real = read_file(v1_model_path());
  const std::string path = temp_path("bad.model");
  auto expect_error = [&](const std::string& bytes, const std::string& what) {
    SCOPED_TRACE(what);
    write_file(path, bytes);
    try {
      load_sentencepiece_model(path);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind(path + ":", 0), 0u) << "error should name the file: " << e.what();
    }
  };
  expect_error("", "empty file");
  expect_error("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "overlong varint");
  expect_error("hello, I am not a protobuf at all", "text");
  expect_error(std::string("\x0a\x80\x80\x80\x80\x08", 6), "length past the end");
  std::mt19937 rng(42);
  std::string noise(4096, '\0');
  for (char& c : noise) c = char(rng());
  expect_error(noise, "random bytes");
  // Pieces come first in the file and trainer_spec after them: any cut in the first half
  // leaves a truncated field or no trainer_spec.
  for (size_t cut : {size_t(1), size_t(2), size_t(7), size_t(100), size_t(1001), real.size() / 4, real.size() / 2}) {
    expect_error(real.substr(0, cut), "truncated to " + std::to_string(cut) + " bytes");
  }
  // A well-formed unigram model: one piece, trainer_spec {model_type: UNIGRAM}.
  const std::string unigram = std::string("\x0a\x09\x0a\x05<unk>\x18\x02", 11) + std::string("\x12\x02\x18\x01", 4);
  write_file(path, unigram);
  try {
    load_sentencepiece_model(path);
    ADD_FAILURE() << "unigram model accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("UNIGRAM"), std::string::npos) << e.what();
  }
  // Every other cut and random corruptions: an Error or a model, never a crash.
  for (size_t cut = 0; cut < real.size(); cut += 4999) {
    write_file(path, real.substr(0, cut));
    try {
      Tokenizer tok(load_sentencepiece_model(path));
    } catch (const Error&) {
    }
  }
  for (int trial = 0; trial < 100; ++trial) {
    std::string bad = real;
    for (int k = 0; k < 8; ++k) bad[rng() % bad.size()] = char(rng());
    write_file(path, bad);
    try {
      Tokenizer tok(load_sentencepiece_model(path));
      (void)tok.encode("corrupted models must not crash", true);
    } catch (const Error&) {
    }
  }
  std::remove(path.c_str());
  EXPECT_THROW(load_sentencepiece_model(temp_path("does-not-exist.model")), Error);
}

// ---- encode -----------------------------------------------------------------------------------

TEST(Tokenizer, InvalidUtf8IsAnError) {
  REQUIRE_PATH(v1_model_path());
  const std::pair<std::string, size_t> bad[] = {
      {"\xff", 0},                       // never a UTF-8 byte
      {"abc\xc3", 3},                    // cut short
      {"ok \x80 no", 3},                 // stray continuation byte
      {"\xc0\xaf", 0},                   // overlong '/'
      {"x\xe0\x80\xaf", 1},              // overlong, 3 bytes
      {"\xed\xa0\x80", 0},               // UTF-16 surrogate
      {"\xf4\x90\x80\x80", 0},           // past U+10FFFF
      {"caf\xc3\xa9 \xe2\x82", 6},       // valid é, then a cut-short €
  };
  for (const auto& [text, at] : bad) {
    try {
      v1().encode(text, true);
      ADD_FAILURE() << "accepted " << json(text).dump(-1, ' ', false, json::error_handler_t::replace);
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), "text: invalid UTF-8 at byte " + std::to_string(at));
    }
  }
  // A literal U+FFFD and the largest code point are valid text.
  EXPECT_NO_THROW(v1().encode("\xef\xbf\xbd \xf4\x8f\xbf\xbf", false));
}

// An independent, deliberately naive BPE: scan every adjacent pair, merge the best-scoring one
// (leftmost on ties), repeat. O(n^2) but obviously right; only for short texts.
std::vector<int32_t> naive_encode(const Tokenizer& tok, const std::string& text) {
  const Vocab& v = tok.vocab();
  std::unordered_map<std::string, int32_t> normal;
  for (size_t i = 0; i < v.pieces.size(); ++i) {
    if (v.types[i] == PieceType::Normal) normal.emplace(v.pieces[i], int32_t(i));
  }
  std::string norm = text.empty() ? "" : "\xe2\x96\x81";
  for (char c : text) norm += c == ' ' ? std::string("\xe2\x96\x81") : std::string(1, c);
  std::vector<std::string> sym;
  for (size_t i = 0; i < norm.size();) {
    const auto b = uint8_t(norm[i]);
    const size_t len = b < 0x80 ? 1 : b < 0xe0 ? 2 : b < 0xf0 ? 3 : 4;
    sym.push_back(norm.substr(i, len));
    i += len;
  }
  for (;;) {
    int best = -1;
    float best_score = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = normal.find(sym[i] + sym[i + 1]);
      if (it != normal.end() && (best < 0 || v.scores[size_t(it->second)] > best_score)) {
        best = int(i), best_score = v.scores[size_t(it->second)];
      }
    }
    if (best < 0) break;
    sym[size_t(best)] += sym[size_t(best) + 1];
    sym.erase(sym.begin() + best + 1);
  }
  std::vector<int32_t> ids;
  for (const std::string& s : sym) {
    auto it = normal.find(s);
    if (it != normal.end()) {
      ids.push_back(it->second);
    } else {
      for (char c : s) ids.push_back(*tok.byte_token(uint8_t(c)));
    }
  }
  return ids;
}

TEST(Tokenizer, AgreesWithNaiveBpeOnCorpora) {
  REQUIRE_PATH(v1_model_path());
  const std::string corpora = shared_dir() + "/corpora";
  REQUIRE_PATH(corpora);
  int chunks = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(corpora)) {
    if (!entry.is_regular_file() || entry.file_size() < 4096) continue;
    const std::string ext = entry.path().extension().string();
    if (ext != ".txt" && ext != ".raw" && ext != ".tex" && ext != "") continue;
    std::string data = read_file(entry.path().string());
    // A 600-byte window from the middle, trimmed to whole UTF-8 characters.
    size_t b = data.size() / 2, e = b + 600;
    while (b > 0 && (uint8_t(data[b]) & 0xc0) == 0x80) --b;
    while (e < data.size() && (uint8_t(data[e]) & 0xc0) == 0x80) ++e;
    const std::string text = data.substr(b, e - b);
    try {
      v1().encode(text, false);
    } catch (const Error&) {
      continue;  // not UTF-8 (binary or Latin-1 file)
    }
    SCOPED_TRACE(entry.path().string());
    EXPECT_EQ(v1().encode(text, false), naive_encode(v1(), text));
    ++chunks;
  }
  EXPECT_GT(chunks, 0);
}

TEST(Tokenizer, LongTextIsFastAndRoundTrips) {
  const std::string path = shared_dir() + "/corpora/tinyshakespeare/input.txt";
  REQUIRE_PATH(v1_model_path());
  REQUIRE_PATH(path);
  const std::string text = read_file(path).substr(0, 200 * 1024);
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = v1().encode(text, true);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ info ] encoded %zu bytes into %zu tokens in %.1f ms\n", text.size(), ids.size(), secs * 1e3);
  // O(n log n) takes tens of milliseconds; an O(n^2) merge loop would take minutes.
  EXPECT_LT(secs, 5.0);
  EXPECT_GT(ids.size(), text.size() / 8);
  EXPECT_EQ(v1().decode(ids), text);
  EXPECT_EQ(stream_decode(v1(), ids), text);
}

// ---- decode -----------------------------------------------------------------------------------

TEST(Tokenizer, DecodeFollowsSentencePieceLeadingSpaceRule) {
  REQUIRE_PATH(v1_model_path());
  const Tokenizer& t = v1();
  const int32_t sp = 28705, sp2 = 259, hello = 22557;  // "▁", "▁▁", "▁Hello"
  const int32_t A = 3 + 'A';
  EXPECT_EQ(t.decode({hello}), "Hello");
  EXPECT_EQ(t.decode({1, hello, 2}), "Hello");        // <s> and </s> are invisible
  EXPECT_EQ(t.decode({sp2}), " ");                      // only one ▁ is dropped
  EXPECT_EQ(t.decode({sp, hello}), " Hello");           // the dropped ▁ ends the start of text
  EXPECT_EQ(t.decode({1, sp, hello}), " Hello");
  EXPECT_EQ(t.decode({A, hello}), "A Hello");           // so does any text, bytes included
  EXPECT_EQ(t.decode({0}), " \xe2\x81\x87 ");           // <unk> → " ⁇ "
  EXPECT_EQ(t.decode({0, hello}), " \xe2\x81\x87  Hello");
  // Byte runs: valid characters whole, every invalid byte → U+FFFD.
  EXPECT_EQ(t.decode({3 + 0xc3, 3 + 0xa9}), "\xc3\xa9");
  EXPECT_EQ(t.decode({3 + 0xe2, 3 + 0x82, hello}), "\xef\xbf\xbd\xef\xbf\xbd Hello");
  EXPECT_EQ(t.decode({3 + 0xc3, hello, 3 + 0xa9}), "\xef\xbf\xbd Hello\xef\xbf\xbd");
  EXPECT_EQ(t.decode({3 + 0xed, 3 + 0xa0, 3 + 0x80}), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");  // surrogate
  EXPECT_THROW(t.decode({32000}), Error);
  EXPECT_THROW(t.decode({-1}), Error);
}

TEST(Tokenizer, StreamingEmitsWholeCharactersOnly) {
  REQUIRE_PATH(v1_model_path());
  StreamDecoder dec(v1());
  EXPECT_EQ(dec.feed(1), "");
  EXPECT_EQ(dec.feed(22557), "Hello");
  EXPECT_EQ(dec.feed(3 + 0xf0), "");  // 🧬 = F0 9F A7 AC, held until complete
  EXPECT_EQ(dec.feed(3 + 0x9f), "");
  EXPECT_EQ(dec.feed(3 + 0xa7), "");
  EXPECT_EQ(dec.feed(3 + 0xac), "\xf0\x9f\xa7\xac");
  EXPECT_EQ(dec.feed(3 + 0xe2), "");
  EXPECT_EQ(dec.feed(3 + 0x41), "\xef\xbf\xbd" "A");  // E2 41 can never be a character
  EXPECT_EQ(dec.feed(3 + 0xc3), "");
  EXPECT_EQ(dec.flush(), "\xef\xbf\xbd");  // the stream ended inside a character
}

TEST(Tokenizer, StreamingEqualsDecodeOnRandomIds) {
  REQUIRE_PATH(v1_model_path());
  std::mt19937 rng(7);
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<int32_t> ids(rng() % 12);
    for (auto& id : ids) {
      const uint32_t r = rng() % 10;
      id = r < 5 ? int32_t(3 + rng() % 256)                       // byte pieces, often
           : r < 6 ? int32_t(rng() % 3)                           // <unk>, <s>, </s>
           : r < 7 ? int32_t(std::vector<int32_t>{28705, 259, 2287}[rng() % 3])  // ▁ runs
                   : int32_t(rng() % 32000);
    }
    ASSERT_EQ(stream_decode(v1(), ids), v1().decode(ids)) << ::testing::PrintToString(ids);
  }
}

// ---- behaviours the Mixtral vocabulary does not exercise (hand-built vocabularies) ------------

Vocab toy_vocab() {
  Vocab v;
  auto add = [&](const std::string& p, float score, PieceType t) {
    v.pieces.push_back(p), v.scores.push_back(score), v.types.push_back(t);
  };
  add("<unk>", 0, PieceType::Unknown);       // 0
  add("<s>", 0, PieceType::Control);         // 1
  add("</s>", 0, PieceType::Control);        // 2
  add("a", 0, PieceType::Normal);            // 3
  add("b", 0, PieceType::Normal);            // 4
  add("c", 0, PieceType::Normal);            // 5
  add("\xe2\x96\x81", 0, PieceType::Normal); // 6 "▁"
  add("ab", 10, PieceType::Unused);          // 7
  add("abc", 5, PieceType::Normal);          // 8
  add("<sep>", 0, PieceType::UserDefined);   // 9
  add("bc", 1, PieceType::Normal);           // 10
  add("aa", 1, PieceType::Normal);           // 11
  v.byte_fallback = false;
  return v;
}

TEST(Tokenizer, UnusedPiecesMergeThenSplitBack) {
  const Tokenizer t(toy_vocab());
  // "ab" (Unused) is the best merge; it is merged, then emitted as its parts...
  EXPECT_EQ(t.encode("ab", false), (std::vector<int32_t>{6, 3, 4}));
  // ...but it still feeds the later merge "ab"+"c" → "abc", so "bc" never wins.
  EXPECT_EQ(t.encode("abc", false), (std::vector<int32_t>{6, 8}));
}

TEST(Tokenizer, EqualScoresMergeLeftmostFirst) {
  const Tokenizer t(toy_vocab());
  EXPECT_EQ(t.encode("aaa", false), (std::vector<int32_t>{6, 11, 3}));
  EXPECT_EQ(t.encode("aaaaa", false), (std::vector<int32_t>{6, 11, 11, 3}));
}

TEST(Tokenizer, UserDefinedPiecesStayWholeAndUnknownsCollapse) {
  const Tokenizer t(toy_vocab());
  EXPECT_EQ(t.encode("a<sep>b", false), (std::vector<int32_t>{6, 3, 9, 4}));
  // Without byte fallback, a run of unknown characters becomes one <unk>.
  EXPECT_EQ(t.encode("xyz", false), (std::vector<int32_t>{6, 0}));
  EXPECT_EQ(t.encode("x a", false), (std::vector<int32_t>{6, 0, 6, 3}));
  EXPECT_EQ(t.decode({6, 0, 6, 3}), " \xe2\x81\x87  a");
  EXPECT_FALSE(t.byte_token('a'));
}

TEST(Tokenizer, RemoveExtraWhitespaces) {
  Vocab v = toy_vocab();
  v.remove_extra_whitespaces = true;
  const Tokenizer t(v);
  EXPECT_EQ(t.encode("  a   b  ", false), (std::vector<int32_t>{6, 3, 6, 4}));
  EXPECT_EQ(t.encode("   ", false), std::vector<int32_t>{});
  // Decode then drops every leading ▁ until text appears.
  EXPECT_EQ(t.decode({6, 6, 3, 6, 4}), "a b");
}

TEST(Tokenizer, RejectsInconsistentVocab) {
  Vocab v = toy_vocab();
  v.scores.pop_back();
  EXPECT_THROW(Tokenizer{v}, Error);
  v = toy_vocab();
  v.pieces[4] = "a";  // duplicate
  EXPECT_THROW(Tokenizer{v}, Error);
  v = toy_vocab();
  v.byte_fallback = true;  // but no byte pieces
  EXPECT_THROW(Tokenizer{v}, Error);
  v = toy_vocab();
  v.unk_id = 99;
  EXPECT_THROW(Tokenizer{v}, Error);
}

TEST(Tokenizer, V3ModelKeepsUserDefinedPiecesWhole) {
  REQUIRE_PATH(v3_model_path());
  const Tokenizer t(load_sentencepiece_model(v3_model_path()));
  EXPECT_EQ(t.n_vocab(), 32768);
  EXPECT_EQ(t.piece(769), "[REFERENCE_DOC_1]");
  const auto ids = t.encode("see [REFERENCE_DOC_1] here", false);
  EXPECT_NE(std::find(ids.begin(), ids.end(), 769), ids.end()) << ::testing::PrintToString(ids);
  EXPECT_EQ(t.decode(ids), "see [REFERENCE_DOC_1] here");
}

// ---- chat -------------------------------------------------------------------------------------

std::vector<ChatMessage> messages_of(const json& arr) {
  std::vector<ChatMessage> out;
  for (const auto& m : arr) out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  return out;
}

TEST(Chat, MatchesMistralCommonV1Cases) {
  const std::string path = tokenizers_dir() + "/chat-v1-expected.json";
  REQUIRE_PATH(v1_model_path());
  REQUIRE_PATH(path);
  const json doc = json::parse(read_file(path));
  int n = 0;
  for (const auto& c : doc["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    std::optional<std::string> system;
    if (!c["system_prompt"].is_null()) system = c["system_prompt"].get<std::string>();
    const auto ids = encode_chat_v1(v1(), messages_of(c["messages"]), system);
    EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(pieces_of(v1(), ids), c["pieces"].get<std::vector<std::string>>());
    if (system) {  // the same prompt as a leading "system" message
      auto msgs = messages_of(c["messages"]);
      msgs.insert(msgs.begin(), {"system", *system});
      EXPECT_EQ(encode_chat_v1(v1(), msgs), ids);
    }
    ++n;
  }
  EXPECT_EQ(n, 4);

  // Encoding the rendered HF template text in one piece per special-token segment is NOT the
  // same (the reply after "[/INST]" loses its ▁): reproduce that documented difference.
  const json& naive = doc["hf_template_string_naive_encoding"];
  std::string rendered = naive["rendered"];
  std::vector<int32_t> naive_ids;
  for (size_t pos = 0; pos < rendered.size();) {
    if (rendered.compare(pos, 3, "<s>") == 0) { naive_ids.push_back(1), pos += 3; continue; }
    if (rendered.compare(pos, 4, "</s>") == 0) { naive_ids.push_back(2), pos += 4; continue; }
    const size_t end = std::min(rendered.find("<s>", pos), rendered.find("</s>", pos));
    const auto seg = v1().encode(rendered.substr(pos, end - pos), false);
    naive_ids.insert(naive_ids.end(), seg.begin(), seg.end());
    pos = end == std::string::npos ? rendered.size() : end;
  }
  EXPECT_EQ(naive_ids, naive["ids"].get<std::vector<int32_t>>());
  EXPECT_NE(naive_ids, doc["cases"][1]["ids"].get<std::vector<int32_t>>());
}

TEST(Chat, MatchesMistralCommonGoldenSample) {
  const std::string dir = tokenizers_dir() + "/mistral-common-samples";
  REQUIRE_PATH(v1_model_path());
  REQUIRE_PATH(dir);
  const json sample = json::parse(read_file(dir + "/no_tools-sample.json"));
  const auto messages = messages_of(sample["messages"]);
  const auto ids = encode_chat_v1(v1(), messages);
  EXPECT_EQ(ids, json::parse(read_file(dir + "/no_tools-tokens_v1.json"))["tokens"].get<std::vector<int32_t>>());
  std::string joined;
  for (const auto& p : pieces_of(v1(), ids)) joined += p;
  std::string text = read_file(dir + "/no_tools-text_v1.txt");
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  EXPECT_EQ(joined, text);

  // The v3 tokenizer (control tokens [INST]=3, [/INST]=4) with the same plain BPE underneath:
  // [BOS] ([INST] encode(user) [/INST] | encode(assistant) [EOS])*.
  REQUIRE_PATH(v3_model_path());
  const Tokenizer v3(load_sentencepiece_model(v3_model_path()));
  std::vector<int32_t> v3_ids = {v3.bos()};
  for (const auto& m : messages) {
    const auto part = v3.encode(m.content, false);
    if (m.role == "user") v3_ids.push_back(3);
    v3_ids.insert(v3_ids.end(), part.begin(), part.end());
    v3_ids.push_back(m.role == "user" ? 4 : v3.eos());
  }
  EXPECT_EQ(v3_ids, json::parse(read_file(dir + "/no_tools-tokens_v3.json"))["tokens"].get<std::vector<int32_t>>());
}

TEST(Chat, RejectsMalformedConversations) {
  REQUIRE_PATH(v1_model_path());
  auto expect_error = [](const std::vector<ChatMessage>& msgs, const std::optional<std::string>& sys, const char* what) {
    try {
      encode_chat_v1(v1(), msgs, sys);
      ADD_FAILURE() << "accepted: " << what;
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind("chat: ", 0), 0u) << e.what();
    }
  };
  expect_error({}, std::nullopt, "no messages");
  expect_error({{"system", "be brief"}}, std::nullopt, "system only");
  expect_error({{"assistant", "hi"}}, std::nullopt, "starts with assistant");
  expect_error({{"user", "a"}, {"user", "b"}}, std::nullopt, "two user turns");
  expect_error({{"user", "a"}, {"assistant", "b"}, {"assistant", "c"}}, std::nullopt, "two assistant turns");
  expect_error({{"user", "a"}, {"system", "b"}}, std::nullopt, "system in the middle");
  expect_error({{"system", "x"}, {"user", "a"}}, std::string("y"), "system prompt twice");
  expect_error({{"tool", "a"}}, std::nullopt, "unknown role");
  EXPECT_THROW(encode_chat_v1(v1(), {{"user", "bad \xff byte"}}), Error);  // "text: invalid UTF-8 ..."
}

}  // namespace
}  // namespace mixtral
