#pragma once
// The yardstick for Replicated: DeepSeek's published EPLB algorithm (github.com/deepseek-ai/
// EPLB, eplb.py, rebalance_experts), written independently of llep for one layer.
//
//   hierarchical (groups % nodes == 0): pack expert groups onto nodes (balanced packing by
//     group load), replicate inside each node (each extra copy to the expert with the most
//     load per copy), pack the copies onto the node's GPUs (balanced packing by load per
//     copy);
//   global (otherwise): the same with one group and one node.
// Balanced packing: items by weight descending, each to the lightest pack not yet full
// (every pack takes items / packs); with one item per pack, item i goes to pack i.
// Ties (which torch leaves open) go to the lower index here.
// A GPU's load is EPLB's own estimate: each copy of expert e carries load[e] / copies[e].
// EPLB may put two copies of one expert on one GPU.
#include <algorithm>
#include <numeric>
#include <set>
#include <stdexcept>
#include <vector>

namespace eplb_ref {

struct Packing {
  std::vector<int> pack;     // per item
  std::vector<int> in_pack;  // the item's position in its pack
};

inline Packing balanced_packing(const std::vector<double>& w, int packs) {
  const int n = static_cast<int>(w.size());
  if (n % packs != 0) throw std::invalid_argument("items must divide evenly into packs");
  const int per = n / packs;
  Packing p{std::vector<int>(w.size(), -1), std::vector<int>(w.size(), -1)};
  if (per == 1) {
    for (int i = 0; i < n; ++i) p.pack[static_cast<std::size_t>(i)] = i, p.in_pack[static_cast<std::size_t>(i)] = 0;
    return p;
  }
  std::vector<int> order(w.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return w[static_cast<std::size_t>(a)] > w[static_cast<std::size_t>(b)]; });
  std::vector<double> weight(static_cast<std::size_t>(packs), 0);
  std::vector<int> items(static_cast<std::size_t>(packs), 0);
  for (const int i : order) {
    int best = -1;
    for (int k = 0; k < packs; ++k)
      if (items[static_cast<std::size_t>(k)] < per &&
          (best < 0 || weight[static_cast<std::size_t>(k)] < weight[static_cast<std::size_t>(best)]))
        best = k;
    p.pack[static_cast<std::size_t>(i)] = best;
    p.in_pack[static_cast<std::size_t>(i)] = items[static_cast<std::size_t>(best)]++;
    weight[static_cast<std::size_t>(best)] += w[static_cast<std::size_t>(i)];
  }
  return p;
}

struct Replication {
  std::vector<int> phy2log;  // per physical copy
  std::vector<int> count;    // per logical expert
};

// num_phy copies of w.size() experts: one each, then each extra to the most load per copy.
inline Replication replicate(const std::vector<double>& w, int num_phy) {
  const int n = static_cast<int>(w.size());
  Replication r{std::vector<int>(static_cast<std::size_t>(num_phy)), std::vector<int>(w.size(), 1)};
  std::iota(r.phy2log.begin(), r.phy2log.begin() + n, 0);
  for (int i = n; i < num_phy; ++i) {
    int best = 0;
    for (int e = 1; e < n; ++e)
      if (w[static_cast<std::size_t>(e)] / r.count[static_cast<std::size_t>(e)] >
          w[static_cast<std::size_t>(best)] / r.count[static_cast<std::size_t>(best)])
        best = e;
    r.phy2log[static_cast<std::size_t>(i)] = best;
    ++r.count[static_cast<std::size_t>(best)];
  }
  return r;
}

struct Result {
  std::vector<int> phy2log;  // num_replicas: GPU g holds [g * per_gpu, (g + 1) * per_gpu)
  std::vector<int> count;    // copies per expert
  int gpus = 0;
  int per_gpu = 0;
  bool hierarchical = false;

  // GPU loads under EPLB's estimate: load[e] / count[e] per copy.
  [[nodiscard]] std::vector<double> gpu_loads(const std::vector<double>& load) const {
    std::vector<double> out(static_cast<std::size_t>(gpus), 0);
    for (std::size_t s = 0; s < phy2log.size(); ++s) {
      const auto e = static_cast<std::size_t>(phy2log[s]);
      out[s / static_cast<std::size_t>(per_gpu)] += load[e] / count[e];
    }
    return out;
  }
  // The distinct experts on GPU g.
  [[nodiscard]] std::set<int> held(int g) const {
    const auto b = phy2log.begin() + static_cast<long>(g) * per_gpu;
    return std::set<int>(b, b + per_gpu);
  }
};

inline Result rebalance(const std::vector<double>& w, int num_replicas, int groups, int nodes, int gpus) {
  const int N = static_cast<int>(w.size());
  Result out;
  out.hierarchical = groups % nodes == 0;
  if (!out.hierarchical) groups = 1, nodes = 1;
  if (N % groups != 0 || gpus % nodes != 0 || num_replicas % gpus != 0 || num_replicas < N)
    throw std::invalid_argument("EPLB rejects this configuration");
  const int size = N / groups, groups_per_node = groups / nodes, per_node = N / nodes;
  const int phy_per_node = num_replicas / nodes, gpus_per_node = gpus / nodes;
  out.gpus = gpus;
  out.per_gpu = num_replicas / gpus;
  out.phy2log.assign(static_cast<std::size_t>(num_replicas), -1);
  out.count.assign(w.size(), 0);

  // 1. Groups onto nodes: expert e of group g at position j gets the node-major id mlog.
  std::vector<double> group_load(static_cast<std::size_t>(groups), 0);
  for (int e = 0; e < N; ++e) group_load[static_cast<std::size_t>(e / size)] += w[static_cast<std::size_t>(e)];
  const Packing gp = balanced_packing(group_load, nodes);
  std::vector<int> mlog2log(w.size());
  for (int e = 0; e < N; ++e) {
    const auto g = static_cast<std::size_t>(e / size);
    const int mlog = (gp.pack[g] * groups_per_node + gp.in_pack[g]) * size + e % size;
    mlog2log[static_cast<std::size_t>(mlog)] = e;
  }
  for (int n = 0; n < nodes; ++n) {
    // 2. Replicate inside the node.
    std::vector<double> local(static_cast<std::size_t>(per_node));
    for (int i = 0; i < per_node; ++i)
      local[static_cast<std::size_t>(i)] = w[static_cast<std::size_t>(mlog2log[static_cast<std::size_t>(n * per_node + i)])];
    const Replication rep = replicate(local, phy_per_node);
    // 3. Copies onto the node's GPUs.
    std::vector<double> share(static_cast<std::size_t>(phy_per_node));
    for (int i = 0; i < phy_per_node; ++i) {
      const auto m = static_cast<std::size_t>(rep.phy2log[static_cast<std::size_t>(i)]);
      share[static_cast<std::size_t>(i)] = local[m] / rep.count[m];
    }
    const Packing pp = balanced_packing(share, gpus_per_node);
    for (int i = 0; i < phy_per_node; ++i) {
      const int slot = n * phy_per_node + pp.pack[static_cast<std::size_t>(i)] * out.per_gpu +
                       pp.in_pack[static_cast<std::size_t>(i)];
      const int e = mlog2log[static_cast<std::size_t>(n * per_node + rep.phy2log[static_cast<std::size_t>(i)])];
      out.phy2log[static_cast<std::size_t>(slot)] = e;
    }
    for (int i = 0; i < per_node; ++i)
      out.count[static_cast<std::size_t>(mlog2log[static_cast<std::size_t>(n * per_node + i)])] =
          rep.count[static_cast<std::size_t>(i)];
  }
  return out;
}

}  // namespace eplb_ref
