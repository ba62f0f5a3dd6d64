// Every backward of src/train/train_ops.h against central finite differences of its forward,
// in double (h = 1e-5, so the check is tight: 1e-6 relative), on awkward small shapes; and the
// float fast paths against the scalar references.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "core/thread_pool.h"
#include "train/train_ops.h"

using namespace mixtral;
using namespace mixtral::train;
using Vec = std::vector<double>;

namespace {

Vec randn(size_t n, uint32_t seed, double scale = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> d(0.0, scale);
  Vec v(n);
  for (double& x : v) x = d(rng);
  return v;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// d loss/d x[i] by central differences, for every i, against `grad`.
void expect_fd(Vec& x, const std::function<double()>& loss, const Vec& grad, const char* what, double h = 1e-5,
               double tol = 1e-6) {
  ASSERT_EQ(x.size(), grad.size()) << what;
  for (size_t i = 0; i < x.size(); ++i) {
    const double save = x[i];
    x[i] = save + h;
    const double lp = loss();
    x[i] = save - h;
    const double lm = loss();
    x[i] = save;
    const double num = (lp - lm) / (2 * h);
    EXPECT_NEAR(grad[i], num, tol * (1.0 + std::abs(num))) << what << "[" << i << "]";
  }
}

}  // namespace

TEST(TrainOps, LinearBackwardMatchesFiniteDifferences) {
  const int64_t T = 3, in = 5, out = 4;
  Vec W = randn(out * in, 1), x = randn(T * in, 2), dy = randn(T * out, 3);
  auto loss = [&] {
    Vec y(T * out);
    ref::linear_forward(W.data(), out, in, x.data(), T, y.data());
    return dot(y, dy);
  };
  Vec dx(T * in), dW(out * in, 0.0);
  ref::linear_backward(W.data(), out, in, x.data(), dy.data(), T, dx.data(), dW.data());
  expect_fd(x, loss, dx, "dx");
  expect_fd(W, loss, dW, "dW");
}

TEST(TrainOps, LinearFastPathMatchesReference) {
  ThreadPool pool(2);
  for (int64_t T : {1, 7, 33})
    for (auto [out, in] : {std::pair<int64_t, int64_t>{5, 3}, {17, 40}, {64, 48}}) {
      std::vector<float> W(size_t(out * in)), x(size_t(T * in)), dy(size_t(T * out));
      std::mt19937 rng(uint32_t(T * 100 + out));
      std::normal_distribution<float> d(0, 1);
      for (auto* v : {&W, &x, &dy})
        for (float& f : *v) f = d(rng);
      std::vector<float> y(size_t(T * out)), y_ref(y.size()), dx(x.size()), dx_ref(x.size());
      std::vector<float> dW(W.size(), 0.5f), dW_ref(W.size(), 0.5f);
      LinearScratch s;
      linear_forward(W.data(), out, in, x.data(), T, y.data(), pool);
      ref::linear_forward(W.data(), out, in, x.data(), T, y_ref.data());
      linear_backward(W.data(), out, in, x.data(), dy.data(), T, dx.data(), dW.data(), s, pool);
      ref::linear_backward(W.data(), out, in, x.data(), dy.data(), T, dx_ref.data(), dW_ref.data());
      for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], y_ref[i], 1e-4f);
      for (size_t i = 0; i < dx.size(); ++i) EXPECT_NEAR(dx[i], dx_ref[i], 1e-4f);
      for (size_t i = 0; i < dW.size(); ++i) EXPECT_NEAR(dW[i], dW_ref[i], 1e-4f);
    }
}

TEST(TrainOps, EmbeddingBackwardAccumulatesRepeatedTokens) {
  const int64_t V = 6, D = 4, T = 5;
  const int32_t tok[T] = {3, 1, 3, 0, 3};
  Vec E = randn(V * D, 4), dy = randn(T * D, 5);
  auto loss = [&] {
    Vec y(T * D);
    embedding_forward(E.data(), D, tok, T, y.data());
    return dot(y, dy);
  };
  Vec dE(V * D, 0.0);
  embedding_backward(D, tok, T, dy.data(), dE.data());
  expect_fd(E, loss, dE, "dE");
}

TEST(TrainOps, RmsNormBackwardMatchesFiniteDifferences) {
  const int64_t T = 3, D = 8;
  Vec x = randn(T * D, 6), g = randn(D, 7), dy = randn(T * D, 8);
  ThreadPool pool(2);
  auto loss = [&] {
    Vec y(T * D), r(T);
    rmsnorm_forward(x.data(), g.data(), T, D, 1e-5, y.data(), r.data(), nullptr);
    return dot(y, dy);
  };
  Vec y(T * D), r(T), dx(T * D), dg(D, 0.0);
  rmsnorm_forward(x.data(), g.data(), T, D, 1e-5, y.data(), r.data(), &pool);
  rmsnorm_backward(x.data(), g.data(), r.data(), dy.data(), T, D, dx.data(), dg.data(), &pool);
  expect_fd(x, loss, dx, "dx");
  expect_fd(g, loss, dg, "dg");
}

TEST(TrainOps, RopeBackwardIsTheInverseRotation) {
  const int64_t T = 3, H = 2, hd = 6;
  const int32_t pos[T] = {0, 1, 5};
  RopeTable rt(hd, 8, 10000.0f);
  Vec x = randn(T * H * hd, 9), dy = randn(T * H * hd, 10);
  auto loss = [&] {
    Vec y = x;
    rope_forward(y.data(), T, pos, H, rt);
    return dot(y, dy);
  };
  Vec dx = dy;
  rope_backward(dx.data(), T, pos, H, rt);
  expect_fd(x, loss, dx, "dx");
  // Position 0 is the identity; the pairs are (i, i + hd/2) as in HF's rotate_half.
  Vec y = x;
  rope_forward(y.data(), T, pos, H, rt);
  for (int64_t i = 0; i < H * hd; ++i) EXPECT_EQ(y[size_t(i)], x[size_t(i)]);
  const double a = 1.0 * std::pow(10000.0, 0.0);  // pair 0 of position 1 turns by 1 radian
  EXPECT_NEAR(y[size_t(H * hd)], x[size_t(H * hd)] * std::cos(a) - x[size_t(H * hd + 3)] * std::sin(a), 1e-7);
}

TEST(TrainOps, GroupedQueryAttentionBackwardMatchesFiniteDifferences) {
  const AttnShape s{2, 4, 4, 2, 3};
  const int64_t T = s.B * s.S, qd = s.Hq * s.hd, kvd = s.Hkv * s.hd;
  Vec q = randn(T * qd, 11), k = randn(T * kvd, 12), v = randn(T * kvd, 13), dy = randn(T * qd, 14);
  ThreadPool pool(3);
  auto loss = [&] {
    Vec p(s.B * s.Hq * s.S * s.S), o(T * qd);
    attention_forward(q.data(), k.data(), v.data(), s, p.data(), o.data(), nullptr);
    return dot(o, dy);
  };
  Vec p(s.B * s.Hq * s.S * s.S), o(T * qd), dq(T * qd), dk(T * kvd), dv(T * kvd);
  attention_forward(q.data(), k.data(), v.data(), s, p.data(), o.data(), &pool);
  attention_backward(q.data(), k.data(), v.data(), p.data(), o.data(), dy.data(), s, dq.data(), dk.data(), dv.data(),
                     &pool);
  expect_fd(q, loss, dq, "dq");
  expect_fd(k, loss, dk, "dk");
  expect_fd(v, loss, dv, "dv");
  // Causality: the first token of a sequence sees only itself.
  for (int64_t d = 0; d < s.hd; ++d) EXPECT_NEAR(o[size_t(d)], v[size_t(d)], 1e-12);
}

TEST(TrainOps, SwiGluBackwardMatchesFiniteDifferences) {
  const int64_t n = 9;
  Vec a = randn(n, 15, 2.0), b = randn(n, 16), dy = randn(n, 17);
  auto loss = [&] {
    Vec g(n);
    swiglu_forward(a.data(), b.data(), g.data(), n);
    return dot(g, dy);
  };
  Vec da(n), db(n);
  swiglu_backward(a.data(), b.data(), dy.data(), da.data(), db.data(), n);
  expect_fd(a, loss, da, "da");
  expect_fd(b, loss, db, "db");
}

TEST(TrainOps, RouterTopKSoftmaxBackwardMatchesFiniteDifferences) {
  const int64_t T = 4, E = 5, K = 2;
  Vec z = randn(T * E, 18), dw = randn(T * K, 19);
  std::vector<int32_t> idx(T * K);
  auto loss = [&] {
    Vec w(T * K);
    std::vector<int32_t> id(T * K);
    route_forward(z.data(), T, E, K, id.data(), w.data());
    return dot(w, dw);
  };
  Vec w(T * K), dz(T * E, 0.0);
  route_forward(z.data(), T, E, K, idx.data(), w.data());
  route_backward(w.data(), idx.data(), dw.data(), T, E, K, dz.data());
  expect_fd(z, loss, dz, "dz");
  for (int64_t t = 0; t < T; ++t) {
    EXPECT_GE(z[size_t(t * E + idx[size_t(t * K)])], z[size_t(t * E + idx[size_t(t * K + 1)])]);
    EXPECT_NEAR(w[size_t(t * K)] + w[size_t(t * K + 1)], 1.0, 1e-12);
  }
  // Ties go to the lower expert, as in the inference router.
  const double flat[4] = {1, 1, 1, 1};
  int32_t id[2];
  double ww[2];
  route_forward(flat, 1, 4, 2, id, ww);
  EXPECT_EQ(id[0], 0);
  EXPECT_EQ(id[1], 1);
}

TEST(TrainOps, LoadBalanceAndZLossBackwardMatchFiniteDifferences) {
  const int64_t T = 6, E = 4, K = 2;
  Vec z = randn(T * E, 20);
  std::vector<int32_t> idx(T * K);
  Vec w(T * K);
  route_forward(z.data(), T, E, K, idx.data(), w.data());
  // The assignment (f) is a count: fixed under the perturbation, so the loss is smooth in z.
  auto lb = [&] { return load_balance_loss(z.data(), idx.data(), T, E, K, 0.02, static_cast<double*>(nullptr)); };
  Vec dz(T * E, 0.0);
  load_balance_loss(z.data(), idx.data(), T, E, K, 0.02, dz.data());
  expect_fd(z, lb, dz, "load balance dz");
  auto zl = [&] { return router_z_loss(z.data(), T, E, 1e-3, static_cast<double*>(nullptr)); };
  Vec dz2(T * E, 0.0);
  router_z_loss(z.data(), T, E, 1e-3, dz2.data());
  expect_fd(z, zl, dz2, "z-loss dz");
  // Perfectly balanced routing with uniform probabilities gives exactly the coefficient.
  Vec zero(T * E, 0.0);
  std::vector<int32_t> balanced = {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3};
  EXPECT_NEAR(load_balance_loss(zero.data(), balanced.data(), T, E, K, 0.02, static_cast<double*>(nullptr)), 0.02,
              1e-15);
}

TEST(TrainOps, CrossEntropyBackwardMatchesFiniteDifferences) {
  const int64_t T = 3, V = 7;
  const int32_t tgt[T] = {2, 6, 0};
  Vec z = randn(T * V, 21, 3.0);
  auto loss = [&] { return cross_entropy(z.data(), tgt, T, V, 1.0, static_cast<double*>(nullptr), nullptr); };
  Vec dz(T * V);
  cross_entropy(z.data(), tgt, T, V, 1.0, dz.data(), nullptr);
  expect_fd(z, loss, dz, "dz");
  // Uniform logits: log V per token.
  Vec flat(T * V, 0.5);
  EXPECT_NEAR(cross_entropy(flat.data(), tgt, T, V, 1.0, static_cast<double*>(nullptr), nullptr), T * std::log(V), 1e-12);
}
