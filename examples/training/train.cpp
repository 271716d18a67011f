// training: a toy MoE layer trained by SGD on host threads, under standard EP and under
// LLEP, from the same initial weights on the same batches. The routing is fixed and skewed
// (60% of first choices on expert 0), as when balancing losses are off or weak. The student
// layer learns a fixed random teacher MoE: loss = mean over tokens of |out - target|^2 / 2.
// Both runs print their loss: it must agree at every step (the two plans sum the same
// gradients in different orders, so only float rounding differs), while LLEP's busiest rank
// computes fewer rows. The loop itself is in toy.hpp, shared with llep-train-gpu.
//
//   llep-train [--steps S] [--lr L] [--check]
#include <span>
#include <vector>

#include "llep/layer/host_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"
#include "toy.hpp"

namespace {

// Host memory: the layer reads and writes the vectors themselves.
struct HostMem {
  template <class U>
  using Buf = std::vector<U>;
  template <class U>
  Buf<U> alloc(std::size_t n) {
    return Buf<U>(n);
  }
  template <class U>
  void put(Buf<U>& b, const std::vector<U>& v) {
    b = v;
  }
  template <class U>
  std::vector<U> get(const Buf<U>& b) {
    return b;
  }
  template <class U>
  static std::span<U> span(Buf<U>& b) {
    return b;
  }
};

template <class Plnr>
toy::Curve train(Plnr planner, const toy::Options& o) {
  const llep::Topology topo(toy::P, toy::N);
  toy::Run run(o.steps);
  llep::HostGroup group(toy::P);
  return toy::timed(run, o, [&] {
    llep::run_ranks(group, [&](llep::HostThreads& t) {
      llep::HostMoeLayer<Plnr> layer(topo, toy::K, planner, llep::HostSwiGlu<float>(toy::kShape), t);
      llep::HostMoeLayer<llep::StandardEp> teacher(topo, toy::K, llep::StandardEp{},
                                                   llep::HostSwiGlu<float>(toy::kShape), t);
      HostMem mem;
      toy::train_rank(mem, layer, teacher, t, run, o);
    });
  });
}

}  // namespace

int main(int argc, char** argv) {
  toy::Options o;
  if (const int rc = toy::parse(argc, argv, "llep-train", o)) return rc;
  const toy::Curve ep = train(llep::StandardEp{}, o);
  const toy::Curve ll = train(llep::LeastLoaded{1.0, 8}, o);
  return toy::report(ep, ll, o, "host threads");
}
