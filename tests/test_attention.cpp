// The flash-style attention kernel against its scalar reference.
//   - fast == ref within 1e-5 over head sizes (16 … 128, one not a multiple of 16), GQA groups,
//     sliding windows, page sizes that do and do not line up with the key tiles, at every SIMD level
//   - a token's output is bitwise the same alone, inside a long prompt, split across runs in any
//     way, beside other sequences, for 1–3 threads and at both SIMD levels
//   - positions no query sees are never read (they hold NaN here); the output may replace q
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/attention.h"
#include "kernels/dequant.h"
#include "kernel_test_util.h"
#include "test_util.h"

namespace mixtral {
namespace {

using testing::for_each_simd_level;
using testing::normal;

using testing::rel_l2;

// A paged KV store like the model's: blocks of `block` positions in shuffled order, NaN wherever
// nothing was written.
class PagedKV : public KVSource {
 public:
  PagedKV(const AttentionShape& sh, int n_seq, int64_t n_pos, int64_t block, uint32_t seed)
      : kv_dim_(sh.kv_dim()), block_(block), n_blocks_((n_pos + block - 1) / block) {
    const size_t n = size_t(n_seq * n_blocks_ * block_ * kv_dim_);
    k_.assign(n, std::numeric_limits<float>::quiet_NaN());
    v_ = k_;
    table_.resize(size_t(n_seq * n_blocks_));
    for (size_t i = 0; i < table_.size(); ++i) table_[i] = int64_t(i);
    std::mt19937 rng(seed);
    std::shuffle(table_.begin(), table_.end(), rng);
  }
  // Writes random keys and values at positions [p0, p1) of seq.
  void fill(int seq, int64_t p0, int64_t p1, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, 1.0f);
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t i = 0; i < kv_dim_; ++i) {
        k_[offset(seq, p) + size_t(i)] = 1.5f * d(rng);
        v_[offset(seq, p) + size_t(i)] = d(rng);
      }
  }
  const float* k(int seq, int64_t pos) const override { return k_.data() + offset(seq, pos); }
  const float* v(int seq, int64_t pos) const override { return v_.data() + offset(seq, pos); }

 private:
  size_t offset(int seq, int64_t pos) const {
    const int64_t b = table_[size_t(seq * n_blocks_ + pos / block_)];
    return size_t((b * block_ + pos % block_) * kv_dim_);
  }
  int64_t kv_dim_, block_, n_blocks_;
  std::vector<int64_t> table_;
  std::vector<float> k_, v_;
};

// Runs `runs` through the fast kernel with n_threads and returns the outputs.
void fast(const AttentionShape& sh, const std::vector<QueryRun>& runs, const KVSource& kv, int n_threads) {
  ThreadPool pool(n_threads);
  AttentionScratch scratch(sh, n_threads);
  attention(sh, runs.data(), int64_t(runs.size()), kv, scratch, pool);
}

TEST(Attention, MatchesReference) {
  struct Case {
    int64_t n_heads, n_kv_heads, head_dim, window, block;
  };
  const Case cases[] = {{8, 2, 16, 0, 16},  {6, 2, 32, 7, 5},   {4, 4, 40, 0, 32}, {8, 2, 128, 37, 16},
                        {12, 3, 64, 0, 7},  {32, 8, 128, 0, 16}, {2, 1, 8, 3, 16}};
  for (const Case& cs : cases) {
    const AttentionShape sh{cs.n_heads, cs.n_kv_heads, cs.head_dim, cs.window};
    SCOPED_TRACE(::testing::Message() << "heads " << cs.n_heads << "/" << cs.n_kv_heads << " head_dim " << cs.head_dim
                                    << " window " << cs.window << " block " << cs.block);
    // Sequence 0: a 70-token prompt from position 0; sequence 1: three tokens after 50 cached.
    const int64_t n_pos = 80;
    PagedKV kv(sh, 2, n_pos, cs.block, 1);
    kv.fill(0, 0, 70, 2);
    kv.fill(1, 0, 53, 3);
    const auto q = normal(73 * sh.q_dim(), 4);
    std::vector<float> want(q.size()), got(q.size());
    auto runs_into = [&](std::vector<float>& out) {
      return std::vector<QueryRun>{{0, 0, 70, q.data(), out.data()},
                                   {1, 50, 3, q.data() + 70 * sh.q_dim(), out.data() + 70 * sh.q_dim()}};
    };
    const auto want_runs = runs_into(want);
    ref::attention(sh, want_runs.data(), 2, kv);
    for_each_simd_level([&] {
      std::fill(got.begin(), got.end(), 0.0f);
      fast(sh, runs_into(got), kv, 2);
      for (int64_t t = 0; t < 73; ++t)
        for (int64_t h = 0; h < sh.n_heads; ++h) {
          const int64_t o = (t * sh.n_heads + h) * sh.head_dim;
          ASSERT_LE(rel_l2(&got[size_t(o)], &want[size_t(o)], sh.head_dim), 1e-5) << "token " << t << " head " << h;
        }
    });
  }
}

TEST(Attention, TokenOutputDoesNotDependOnTheBatch) {
  const AttentionShape sh{8, 2, 32, 0};
  const AttentionShape windowed{8, 2, 32, 20};
  for (const AttentionShape& s : {sh, windowed}) {
    SCOPED_TRACE(s.window);
    const int64_t n = 90, qd = s.q_dim();
    PagedKV kv(s, 2, 96, 16, 5);
    kv.fill(0, 0, n, 6);
    kv.fill(1, 0, 40, 7);
    const auto q = normal(n * qd, 8);
    const auto q1 = normal(40 * qd, 9);

    // Reference layout: the whole prompt as one run, one thread, AVX2.
    set_simd_level(SimdLevel::AVX2);
    std::vector<float> base(q.size());
    fast(s, {{0, 0, n, q.data(), base.data()}}, kv, 1);
    set_simd_level(best_simd_level());

    for_each_simd_level([&] {
      for (int threads : {1, 2, 3}) {
        SCOPED_TRACE(threads);
        // Each token alone.
        std::vector<float> alone(q.size());
        std::vector<QueryRun> runs;
        for (int64_t t = 0; t < n; ++t) runs.push_back({0, t, 1, q.data() + t * qd, alone.data() + t * qd});
        fast(s, runs, kv, threads);
        EXPECT_EQ(0, std::memcmp(alone.data(), base.data(), base.size() * sizeof(float)));
        // Uneven pieces, interleaved with another sequence's tokens.
        std::vector<float> mixed(q.size()), other(q1.size());
        runs.clear();
        const int64_t cuts[] = {0, 3, 4, 21, 22, 60, 77, n};
        for (size_t i = 0; i + 1 < std::size(cuts); ++i) {
          runs.push_back({0, cuts[i], cuts[i + 1] - cuts[i], q.data() + cuts[i] * qd, mixed.data() + cuts[i] * qd});
          if (i < 4) runs.push_back({1, int64_t(i) * 10, 10, q1.data() + int64_t(i) * 10 * qd, other.data() + int64_t(i) * 10 * qd});
        }
        fast(s, runs, kv, threads);
        EXPECT_EQ(0, std::memcmp(mixed.data(), base.data(), base.size() * sizeof(float)));
      }
    });
  }
}

TEST(Attention, InPlaceOverTheQueries) {
  const AttentionShape sh{8, 2, 32, 0};
  PagedKV kv(sh, 1, 48, 16, 13);
  kv.fill(0, 0, 40, 14);
  const auto q = normal(40 * sh.q_dim(), 15);
  std::vector<float> want(q.size()), inplace = q;
  fast(sh, {{0, 0, 40, q.data(), want.data()}}, kv, 2);
  fast(sh, {{0, 0, 40, inplace.data(), inplace.data()}}, kv, 2);
  EXPECT_EQ(0, std::memcmp(inplace.data(), want.data(), want.size() * sizeof(float)));
  std::vector<float> ref_out(q.size()), ref_inplace = q;
  const QueryRun a{0, 0, 40, q.data(), ref_out.data()}, b{0, 0, 40, ref_inplace.data(), ref_inplace.data()};
  ref::attention(sh, &a, 1, kv);
  ref::attention(sh, &b, 1, kv);
  EXPECT_EQ(0, std::memcmp(ref_inplace.data(), ref_out.data(), ref_out.size() * sizeof(float)));
}

TEST(Attention, NeverReadsPositionsNoQuerySees) {
  const AttentionShape sh{8, 2, 16, 12};  // window 12
  PagedKV kv(sh, 1, 64, 16, 10);
  kv.fill(0, 20, 40, 11);  // queries at 31..39 see 20..39; the rest of the store is NaN
  const auto q = normal(9 * sh.q_dim(), 12);
  std::vector<float> want(q.size()), got(q.size());
  const QueryRun w{0, 31, 9, q.data(), want.data()}, g{0, 31, 9, q.data(), got.data()};
  ref::attention(sh, &w, 1, kv);
  for_each_simd_level([&] {
    fast(sh, {g}, kv, 2);
    for (float x : got) ASSERT_TRUE(std::isfinite(x));
    EXPECT_LE(rel_l2(got.data(), want.data(), int64_t(got.size())), 1e-5);
  });
}

TEST(Attention, RejectsAScratchOfAnotherSizeOrThreadCount) {
  const AttentionShape sh{4, 2, 16, 0};
  AttentionScratch scratch(sh, 1);
  ThreadPool pool(2);
  PagedKV kv(sh, 1, 16, 16, 1);
  kv.fill(0, 0, 1, 2);
  std::vector<float> q(size_t(sh.q_dim())), out(q.size());
  const QueryRun run{0, 0, 1, q.data(), out.data()};
  EXPECT_THROW(attention(sh, &run, 1, kv, scratch, pool), Error);
  ThreadPool one(1);
  EXPECT_THROW(attention(AttentionShape{4, 2, 32, 0}, &run, 1, kv, scratch, one), Error);
  EXPECT_NO_THROW(attention(sh, &run, 1, kv, scratch, one));
  EXPECT_THROW(AttentionScratch(AttentionShape{3, 2, 16, 0}, 1), Error);
}

}  // namespace
}  // namespace mixtral
