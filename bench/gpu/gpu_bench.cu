// llep-gpu-bench: the paper's table measured on one GPU, which stands in for each rank in
// turn (issue 5), and the GEMM efficiency curve that calibrates the cost model.
//
//   llep-gpu-bench curve --csv curve.csv            achieved TFLOP/s of one expert's FFN vs rows
//   llep-gpu-bench table --csv t.csv --markdown t.md  EP vs LLEP per paper scenario
//   llep-gpu-bench table --backward ...               the same, plus forward + backward (training)
//   llep-gpu-bench experts --csv g.csv [--experts E]  GroupedSwiGlu vs cuBLAS per expert
//
// experts: E tasks (experts with their own weights) of R rows each, R = 16 .. 4096, per
// paper shape: CublasSwiGlu per_expert (one cuBLAS GEMM pair per task) against
// GroupedSwiGlu::compute_sized (two launches; the task list and count stay in device
// memory, as in a sync-free step), medians of --reps in the same run; the ratio is the
// cuBLAS time over the grouped time (> 1: the grouped functor is faster). grouped_loose_ms:
// the same call with max_rows = max_task_rows = 8 x the rows, as a step's worst-case bounds.
//
// table: for every shape and routing, EP's and LLEP's plans are made from the expected
// counts; each rank's real work (gather its rows into task order, the SwiGLU GEMMs of exactly
// the rows the plan gives it with foreign experts' own weight buffers, scatter back) runs on
// the whole GPU and is timed with CUDA events (median of --reps after warm-up). A step's
// compute time is the max over ranks; its communication time comes from the bytes each
// rank sends and receives (tokens both ways, and weights) over --link-gbps plus a latency per
// all-to-all round. Peak memory per rank is the device memory in use while that rank's work
// runs (cudaMemGetInfo around it), beside the plan's prediction as StepReport counts it.
//
// --backward adds, per rank and in the same run, a training step: the forward above, then
// what llep::backward runs on that rank with the handle keeping the experts' inputs (its
// default memory options otherwise): the upstream gradients into task order, the experts'
// outputs again, the gate gradients, the experts' backward (dgrad and wgrad GEMMs; fp32
// weight gradients, accumulated into the native experts' resident main gradients, a
// temporary per foreign expert), the input gradients back, and on the native rank the sum of
// every helper's gradient of its experts. Its communication adds the upstream and input
// gradients and the gates (both ways) and the fp32 weight gradients returned to the native
// ranks, over five more all-to-all rounds. Medians of --reps as for forward; the training
// columns give EP's and LLEP's times, their ratio and the peak memory of each.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/scenarios.hpp"
#include "llep/core/cuda_check.hpp"
#include "llep/exec/cuda.cuh"
#include "llep/experts/cublas_swiglu.cuh"
#include "llep/experts/grouped_swiglu.cuh"
#include "llep/layer/backward.hpp"
#include "llep/layer/layout.hpp"
#include "llep/layer/row_ops.hpp"
#include "llep/plan/standard_ep.hpp"

namespace {

using llep::count_t;
using T = __nv_bfloat16;

struct Args {
  std::string mode, csv, markdown;
  int reps = 5, warmup = 2;
  double link_gbps = 370.0, latency_us = 10.0;
  bool grouped = false;
  std::string only_shape, only_routing;
  long long tokens = 0;  // tokens per rank; 0: the shape's own
  bool verbose = false;
  bool backward = false;  // also time forward + backward per rank (training)
  int experts = 8;        // experts: tasks per call
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "error: %s\nusage: llep-gpu-bench curve|table|experts [--csv F] [--markdown F] [--reps N] [--warmup N]\n"
               "       [--link-gbps G] [--latency-us U] [--grouped] [--shape NAME] [--routing NAME] [--tokens N] [--verbose]\n"
               "       [--backward]   (table: also forward + backward per rank, the training columns)\n"
               "       [--experts E]  (experts: tasks per call, default 8)\n",
               why.c_str());
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  if (argc < 2) usage("give a mode: curve, table or experts");
  a.mode = argv[1];
  if (a.mode != "curve" && a.mode != "table" && a.mode != "experts") usage("unknown mode '" + a.mode + "'");
  for (int i = 2; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(f + " needs a value");
      return argv[++i];
    };
    try {
      if (f == "--csv") a.csv = value();
      else if (f == "--markdown") a.markdown = value();
      else if (f == "--reps") a.reps = std::stoi(value());
      else if (f == "--warmup") a.warmup = std::stoi(value());
      else if (f == "--link-gbps") a.link_gbps = std::stod(value());
      else if (f == "--latency-us") a.latency_us = std::stod(value());
      else if (f == "--shape") a.only_shape = value();
      else if (f == "--routing") a.only_routing = value();
      else if (f == "--tokens") a.tokens = std::stoll(value());
      else if (f == "--verbose") a.verbose = true;
      else if (f == "--grouped") a.grouped = true;
      else if (f == "--backward") a.backward = true;
      else if (f == "--experts") a.experts = std::stoi(value());
      else usage("unknown flag " + f);
    } catch (const std::logic_error&) {
      usage("bad value for " + f);
    }
  }
  if (a.reps < 1 || a.warmup < 0 || a.link_gbps <= 0 || a.latency_us < 0 || a.tokens < 0)
    usage("reps >= 1, warmup >= 0, link > 0, tokens >= 0");
  if (a.backward && a.mode != "table") usage("--backward is a flag of table");
  if (a.experts < 1) usage("--experts >= 1");
  return a;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : (v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2);
}

// Device memory that frees itself; filled with small values so the GEMMs see real data.
struct Buf {
  void* p = nullptr;
  explicit Buf(std::size_t bytes) {
    if (bytes) LLEP_CUDA_CHECK(cudaMalloc(&p, bytes));
    if (bytes) LLEP_CUDA_CHECK(cudaMemset(p, 0x3c, bytes));  // bf16 0x3c3c ~ 0.0115
  }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() { if (p) (void)cudaFree(p); }
  template <class V>
  V* as() const { return static_cast<V*>(p); }
};

std::size_t used_bytes() {
  std::size_t free = 0, total = 0;
  LLEP_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return total - free;
}

// Median ms of `run()` on `stream` over reps, after warm-up.
template <class F>
double time_ms(const Args& a, cudaStream_t stream, F&& run) {
  cudaEvent_t start, stop;
  LLEP_CUDA_CHECK(cudaEventCreate(&start));
  LLEP_CUDA_CHECK(cudaEventCreate(&stop));
  for (int w = 0; w < a.warmup; ++w) run();
  std::vector<double> ms;
  for (int r = 0; r < a.reps; ++r) {
    LLEP_CUDA_CHECK(cudaEventRecord(start, stream));
    run();
    LLEP_CUDA_CHECK(cudaEventRecord(stop, stream));
    LLEP_CUDA_CHECK(cudaEventSynchronize(stop));
    float t = 0;
    LLEP_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
    ms.push_back(t);
  }
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
  return median(ms);
}

template <llep::GemmMode Mode>
void curve(const Args& a, std::FILE* csv) {
  llep::CudaExec exec;
  const char* mode = Mode == llep::GemmMode::grouped ? "grouped" : "per_expert";
  for (const auto& shape : llep::bench::kPaperShapes) {
    if (!a.only_shape.empty() && a.only_shape != shape.name) continue;
    const llep::ExpertShape es{shape.hidden, shape.intermediate, false};
    const llep::CublasSwiGlu<T, llep::SiluGlu, Mode> ffn(es);
    const Buf w(es.elems() * sizeof(T));
    for (count_t rows = 16; rows <= 65536; rows *= 2) {
      const Buf in(static_cast<std::size_t>(rows) * es.d() * sizeof(T)), out(static_cast<std::size_t>(rows) * es.d() * sizeof(T));
      const Buf scratch(ffn.scratch_bytes(rows, rows));
      const llep::ExpertTask<T> task{0, w.as<T>(), in.as<T>(), out.as<T>(), rows};
      LLEP_CUDA_CHECK(cudaDeviceSynchronize());  // the fills ran on the legacy stream
      const double ms = time_ms(a, exec.stream(), [&] { ffn.compute(exec, std::span<const llep::ExpertTask<T>>(&task, 1), scratch.p); });
      const double flops = 6.0 * double(rows) * double(es.d()) * double(es.h());
      std::fprintf(csv, "%.*s,%s,%lld,%.6f,%.3f\n", int(shape.name.size()), shape.name.data(), mode,
                   static_cast<long long>(rows), ms, flops / (ms * 1e-3) / 1e12);
      std::fflush(csv);
    }
  }
}

// GroupedSwiGlu against CublasSwiGlu per expert on the same E tasks (see the header).
void grouped_vs_cublas(const Args& a, std::FILE* csv) {
  llep::CudaExec exec;
  for (const auto& shape : llep::bench::kPaperShapes) {
    if (!a.only_shape.empty() && a.only_shape != shape.name) continue;
    const llep::ExpertShape es{shape.hidden, shape.intermediate, false};
    const llep::CublasSwiGlu<T, llep::SiluGlu> cublas(es);
    const llep::GroupedSwiGlu<T, llep::SiluGlu> grouped(es);
    const auto E = static_cast<std::size_t>(a.experts);
    const Buf w(E * es.elems() * sizeof(T));
    for (count_t rows = 16; rows <= 4096; rows *= 2) {
      const std::size_t total = E * static_cast<std::size_t>(rows);
      const Buf in(total * es.d() * sizeof(T)), out(total * es.d() * sizeof(T));
      const auto loose = static_cast<count_t>(8 * total);  // a sync-free step's worst-case bound
      const Buf scratch(std::max(cublas.scratch_bytes(rows, static_cast<count_t>(total)),
                                 grouped.sized_scratch_bytes(a.experts, loose)));
      std::vector<llep::ExpertTask<T>> tasks;
      for (std::size_t e = 0; e < E; ++e)
        tasks.push_back({static_cast<int>(e), w.as<T>() + e * es.elems(), in.as<T>() + e * rows * es.d(),
                         out.as<T>() + e * rows * es.d(), rows});
      const Buf d_tasks(E * sizeof(llep::ExpertTask<T>) + sizeof(std::int32_t));
      const auto n = static_cast<std::int32_t>(E);
      LLEP_CUDA_CHECK(cudaMemcpy(d_tasks.p, tasks.data(), E * sizeof(llep::ExpertTask<T>), cudaMemcpyHostToDevice));
      auto* d_count = reinterpret_cast<std::int32_t*>(d_tasks.as<std::byte>() + E * sizeof(llep::ExpertTask<T>));
      LLEP_CUDA_CHECK(cudaMemcpy(d_count, &n, sizeof n, cudaMemcpyHostToDevice));
      LLEP_CUDA_CHECK(cudaDeviceSynchronize());  // the fills ran on the legacy stream
      const llep::SizedTasks<T> sized{d_tasks.as<llep::ExpertTask<T>>(), d_count, a.experts,
                                      static_cast<count_t>(total), rows};
      const double ms_cublas = time_ms(a, exec.stream(), [&] {
        cublas.compute(exec, std::span<const llep::ExpertTask<T>>(tasks), scratch.p);
      });
      const double ms_grouped = time_ms(a, exec.stream(), [&] { grouped.compute_sized(exec, sized, scratch.p); });
      const llep::SizedTasks<T> sized_loose{sized.tasks, d_count, a.experts, loose, loose};
      const double ms_loose = time_ms(a, exec.stream(), [&] { grouped.compute_sized(exec, sized_loose, scratch.p); });
      const double flops = 6.0 * double(total) * double(es.d()) * double(es.h());
      std::fprintf(csv, "%.*s,%d,%lld,%.6f,%.6f,%.6f,%.3f,%.3f,%.3f\n", int(shape.name.size()), shape.name.data(),
                   a.experts, static_cast<long long>(rows), ms_cublas, ms_grouped, ms_loose, ms_cublas / ms_grouped,
                   flops / (ms_cublas * 1e-3) / 1e12, flops / (ms_grouped * 1e-3) / 1e12);
      std::fflush(csv);
    }
  }
}

struct RankCost {
  double compute_ms = 0, train_ms = 0;            // forward; forward + backward (--backward)
  std::size_t token_bytes = 0, weight_bytes = 0;  // sent + received
  std::size_t measured_peak = 0, predicted_peak = 0, train_peak = 0;
};

struct StepCost {
  double compute_ms = 0, comm_ms = 0;
  std::size_t peak_measured = 0, peak_predicted = 0;
  double train_compute_ms = 0, train_comm_ms = 0;  // --backward: forward + backward
  std::size_t train_peak = 0;
  [[nodiscard]] double step_ms() const { return compute_ms + comm_ms; }
  [[nodiscard]] double train_ms() const { return train_compute_ms + train_comm_ms; }
};

// One rank's backward as llep::backward runs it (see the header): its buffers and tasks,
// over the forward's cin / cout / perm / weights. GW = float: fp32 main gradients.
struct RankBackward {
  using GW = float;
  std::unique_ptr<Buf> cg, cy, gate, gs;                // rows x D, rows x D, rows, rows
  std::vector<std::unique_ptr<Buf>> temps, received;  // foreign experts' gradients; helpers' to sum
  std::vector<llep::ExpertTask<T>> fwd;
  std::vector<llep::ExpertGradTask<T, GW>> native, foreign;
  std::vector<GW*> sums;  // native gradient buffer of each received gradient
};

template <llep::GemmMode Mode>
StepCost measure(const Args& a, llep::CudaExec& exec, const llep::bench::LayerShape& shape, const llep::Plan& plan,
                 llep::CountsView counts, const llep::Topology& topo, bool train) {
  using GW = RankBackward::GW;
  const bool backward_too = a.backward && train;
  const llep::ExpertShape es{shape.hidden, shape.intermediate, false};
  const llep::CublasSwiGlu<T, llep::SiluGlu, Mode> ffn(es);
  const std::size_t row_bytes = es.d() * sizeof(T), expert_bytes = es.elems() * sizeof(T);
  const std::size_t grad_bytes = es.elems() * sizeof(GW);
  const int M = topo.experts_per_rank();
  StepCost step;
  double worst_comm = 0, worst_train_comm = 0;
  llep::Layout layout;
  for (int r = 0; r < topo.ranks(); ++r) {
    layout.build(counts, plan, topo, r);
    const auto tasks = layout.tasks();
    const count_t rows = layout.compute_rows();
    count_t max_task = 0;
    std::size_t foreign = 0;
    for (const auto& t : tasks) {
      max_task = std::max<count_t>(max_task, t.rows);
      foreign += t.native ? 0 : 1;
    }
    RankCost rc;
    {
      // Native experts' weights are resident anyway; only what the step adds counts. So are
      // their fp32 main gradients in training.
      std::vector<std::unique_ptr<Buf>> weights(tasks.size()), main_grads(backward_too ? static_cast<std::size_t>(M) : 0);
      for (std::size_t i = 0; i < tasks.size(); ++i)
        if (tasks[i].native) weights[i] = std::make_unique<Buf>(expert_bytes);
      for (auto& g : main_grads) g = std::make_unique<Buf>(grad_bytes);
      const std::size_t base = used_bytes();
      for (std::size_t i = 0; i < tasks.size(); ++i)
        if (!tasks[i].native) weights[i] = std::make_unique<Buf>(expert_bytes);
      // Two row buffers, as the layer has around the experts: permute cout -> cin, the
      // experts cin -> cout, un-permute cout -> cin.
      const Buf cin(static_cast<std::size_t>(rows) * row_bytes), cout(static_cast<std::size_t>(rows) * row_bytes);
      const Buf scratch(ffn.scratch_bytes(max_task, rows));
      std::vector<std::int32_t> perm(static_cast<std::size_t>(rows));
      for (count_t i = 0; i < rows; ++i)
        perm[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 7919) % std::max<count_t>(rows, 1));
      const Buf dperm(perm.size() * sizeof(std::int32_t));
      if (!perm.empty())
        LLEP_CUDA_CHECK(cudaMemcpy(dperm.p, perm.data(), perm.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice));
      std::vector<llep::ExpertTask<T>> et;
      for (std::size_t i = 0; i < tasks.size(); ++i) {
        const auto off = static_cast<std::size_t>(tasks[i].row) * es.d();
        et.push_back({tasks[i].expert, weights[i]->as<T>(), cin.as<T>() + off, cout.as<T>() + off, tasks[i].rows});
      }
      rc.measured_peak = used_bytes() - base;
      // The fills and the pageable upload above ran on the legacy stream, which the exec's
      // non-blocking stream does not wait for: finish them first.
      LLEP_CUDA_CHECK(cudaDeviceSynchronize());
      auto forward = [&] {
        llep::copy_rows(exec, true, cin.p, cout.p, dperm.as<std::int32_t>(), static_cast<std::size_t>(rows), row_bytes);
        ffn.compute(exec, std::span<const llep::ExpertTask<T>>(et), scratch.p);
        llep::copy_rows(exec, false, cin.p, cout.p, dperm.as<std::int32_t>(), static_cast<std::size_t>(rows), row_bytes);
      };
      rc.compute_ms = time_ms(a, exec.stream(), forward);
      // cuBLAS's and CUB's own buffers appear on first use.
      rc.measured_peak = std::max(rc.measured_peak, used_bytes() - base);
      if (backward_too) {
        // Backward's step memory: forward's output buffer and scratch are free again (cy
        // reuses cout; a larger backward scratch replaces forward's); cin is what the handle
        // kept; foreign weights stay.
        RankBackward b;
        const auto n = static_cast<std::size_t>(rows);
        b.cg = std::make_unique<Buf>(n * row_bytes);
        b.gate = std::make_unique<Buf>(n * sizeof(GW));
        b.gs = std::make_unique<Buf>(n * sizeof(GW));
        const std::size_t bscratch_bytes = ffn.backward_scratch_bytes(max_task, rows);
        std::unique_ptr<Buf> bigger;
        if (bscratch_bytes > ffn.scratch_bytes(max_task, rows)) bigger = std::make_unique<Buf>(bscratch_bytes);
        void* bscratch = bigger ? bigger->p : scratch.p;
        T* cy = cout.as<T>();
        for (std::size_t i = 0; i < tasks.size(); ++i) {
          const auto off = static_cast<std::size_t>(tasks[i].row) * es.d();
          const auto& t = tasks[i];
          GW* g = nullptr;
          if (t.native) {
            g = main_grads[static_cast<std::size_t>(t.expert - r * M)]->as<GW>();
          } else {
            b.temps.push_back(std::make_unique<Buf>(grad_bytes));
            g = b.temps.back()->as<GW>();
          }
          b.fwd.push_back({t.expert, weights[i]->as<T>(), cin.as<T>() + off, cy + off, t.rows});
          (t.native ? b.native : b.foreign)
              .push_back({t.expert, weights[i]->as<T>(), cin.as<T>() + off, b.cg->as<T>() + off, cy + off, g, nullptr,
                          t.rows});
        }
        // The native rank receives one gradient per (expert, helper) and sums them.
        for (const auto& w : plan.weight_transfers())
          if (w.src == r) {
            b.received.push_back(std::make_unique<Buf>(grad_bytes));
            b.sums.push_back(main_grads[static_cast<std::size_t>(w.expert - r * M)]->as<GW>());
          }
        rc.train_peak = std::max(rc.measured_peak, used_bytes() - base);
        LLEP_CUDA_CHECK(cudaDeviceSynchronize());
        auto backward = [&] {
          llep::copy_rows(exec, false, b.cg->p, cout.p, dperm.as<std::int32_t>(), n, row_bytes);
          ffn.compute(exec, std::span<const llep::ExpertTask<T>>(b.fwd), bscratch);
          exec.for_each_n(n, llep::detail::backward::GateGradients<T, GW>{b.cg->as<T>(), cy, b.gate->as<GW>(),
                                                                           b.gs->as<GW>(), es.d()});
          ffn.backward(exec, std::span<const llep::ExpertGradTask<T, GW>>(b.native), llep::GradMode::accumulate,
                       bscratch);
          ffn.backward(exec, std::span<const llep::ExpertGradTask<T, GW>>(b.foreign), llep::GradMode::overwrite,
                       bscratch);
          llep::copy_rows(exec, true, cin.p, cy, dperm.as<std::int32_t>(), n, row_bytes);
          for (std::size_t k = 0; k < b.received.size(); ++k)
            exec.for_each_n(es.elems(), llep::detail::backward::AddGradient<GW>{b.sums[k], b.received[k]->as<GW>(), true});
        };
        rc.train_ms = time_ms(a, exec.stream(), [&] {
          forward();
          backward();
        });
        rc.train_peak = std::max(rc.train_peak, used_bytes() - base);
      }
    }
    // As StepReport predicts it: expert activations in and out, scratch, foreign weights.
    rc.predicted_peak = static_cast<std::size_t>(rows) * 2 * row_bytes + ffn.scratch_bytes(max_task, rows) +
                        foreign * expert_bytes;
    std::size_t moved = 0;
    for (int q = 0; q < topo.ranks(); ++q)
      if (q != r)
        moved += static_cast<std::size_t>(layout.send_counts()[static_cast<std::size_t>(q)] +
                                          layout.recv_counts()[static_cast<std::size_t>(q)]);
    rc.token_bytes = 2 * moved * row_bytes;  // dispatch and combine
    std::size_t grad_moves = 0;
    for (const auto& w : plan.weight_transfers())
      if (w.src == r || w.dst == r) rc.weight_bytes += expert_bytes, ++grad_moves;
    // Sends and receives share the link's two directions: the busier one bounds the time.
    auto link_ms = [&](double bytes, int rounds) {
      return bytes / 2 / (a.link_gbps * 1e9) * 1e3 + (topo.ranks() > 1 ? rounds * a.latency_us * 1e-3 : 0.0);
    };
    const double comm = link_ms(double(rc.token_bytes + rc.weight_bytes), 2);
    // Backward: upstream and input gradients (as the tokens), gates and their gradients,
    // fp32 weight gradients back to the native ranks; five more rounds.
    const double back_bytes = double(rc.token_bytes + 2 * moved * sizeof(GW) + grad_moves * grad_bytes);
    const double train_comm = link_ms(double(rc.token_bytes + rc.weight_bytes) + back_bytes, 7);
    if (a.verbose)
      std::fprintf(stderr, "  %.*s rank %d: %lld rows, %zu tasks (%zu foreign), %.3f ms, peak %zu (pred %zu)%s\n",
                   int(plan.policy().size()), plan.policy().data(), r, static_cast<long long>(rows), tasks.size(), foreign, rc.compute_ms,
                   rc.measured_peak, rc.predicted_peak,
                   backward_too ? (", fwd+bwd " + std::to_string(rc.train_ms) + " ms, peak " + std::to_string(rc.train_peak)).c_str() : "");
    step.compute_ms = std::max(step.compute_ms, rc.compute_ms);
    worst_comm = std::max(worst_comm, comm);
    step.peak_measured = std::max(step.peak_measured, rc.measured_peak);
    step.peak_predicted = std::max(step.peak_predicted, rc.predicted_peak);
    step.train_compute_ms = std::max(step.train_compute_ms, rc.train_ms);
    worst_train_comm = std::max(worst_train_comm, train_comm);
    step.train_peak = std::max(step.train_peak, rc.train_peak);
  }
  step.comm_ms = worst_comm;
  step.train_comm_ms = backward_too ? worst_train_comm : 0.0;
  return step;
}

template <llep::GemmMode Mode>
void table(const Args& a, std::FILE* csv, std::FILE* md) {
  llep::CudaExec exec;
  int dev = 0;
  cudaDeviceProp prop{};
  LLEP_CUDA_CHECK(cudaGetDevice(&dev));
  LLEP_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  std::fprintf(csv, "shape,routing,ep_ms,llep_ms,speedup,ep_compute_ms,llep_compute_ms,ep_comm_ms,llep_comm_ms,"
                    "ep_peak_gib,llep_peak_gib,ep_pred_gib,llep_pred_gib,memory_ratio,llep_vs_ideal%s\n",
               a.backward ? ",ep_train_ms,llep_train_ms,train_speedup,ep_train_compute_ms,llep_train_compute_ms,"
                            "ep_train_comm_ms,llep_train_comm_ms,ep_train_peak_gib,llep_train_peak_gib,train_memory_ratio"
                          : "");
  if (md) {
    std::fprintf(md, "Measured on %s, one GPU standing in for each of P = %d ranks; bf16, %s GEMMs; comm over %.0f "
                     "GB/s + %.0f us per round (computed); median of %d after %d warm-up.\n\n",
                 prop.name, llep::bench::kPaperRanks, Mode == llep::GemmMode::grouped ? "grouped" : "per-expert",
                 a.link_gbps, a.latency_us, a.reps, a.warmup);
    if (a.backward)
      std::fprintf(md, "Training columns (--backward): forward + backward per rank in the same run (fp32 weight "
                       "gradients, inputs kept in the handle), max over ranks, plus their communication.\n\n");
    std::fprintf(md, "| shape | routing | EP ms | LLEP ms | speedup | EP peak GiB (pred) | LLEP peak GiB (pred) | "
                     "memory EP/LLEP | LLEP vs ideal |%s\n|---|---|---:|---:|---:|---:|---:|---:|---:|%s\n",
                 a.backward ? " EP fwd+bwd ms | LLEP fwd+bwd ms | training speedup | EP train peak GiB | "
                              "LLEP train peak GiB | training memory EP/LLEP |"
                            : "",
                 a.backward ? "---:|---:|---:|---:|---:|---:|" : "");
  }
  const double gib = 1024.0 * 1024 * 1024;
  for (const auto& shape : llep::bench::kPaperShapes) {
    if (!a.only_shape.empty() && a.only_shape != shape.name) continue;
    const llep::Topology topo(llep::bench::kPaperRanks, shape.experts);
    const count_t pairs = (a.tokens > 0 ? a.tokens : shape.tokens_per_rank) * shape.top_k;
    for (const auto& skew : llep::bench::paper_routings()) {
      if (!a.only_routing.empty() && a.only_routing != skew.name()) continue;
      if (a.verbose) std::fprintf(stderr, "%.*s %s\n", int(shape.name.size()), shape.name.data(), skew.name().c_str());
      const auto c = llep::sim::skewed_counts(topo.ranks(), shape.experts, pairs, skew);
      const llep::CountsView counts(std::span<const count_t>(c), topo.ranks(), shape.experts);
      std::vector<count_t> loads(static_cast<std::size_t>(shape.experts));
      llep::loads_from_counts(counts, loads);
      llep::Plan ep_plan, ll_plan;
      llep::StandardEp{}.plan(loads, topo, ep_plan);
      llep::bench::paper_llep().plan(loads, topo, ll_plan);
      const StepCost ep = measure<Mode>(a, exec, shape, ep_plan, counts, topo, true);
      const StepCost ll = ll_plan.policy() == ep_plan.policy() ? ep : measure<Mode>(a, exec, shape, ll_plan, counts, topo, true);
      // Force-balanced ideal: every rank computes total/P rows of one expert's FFN, no moves.
      count_t total = 0;
      for (count_t l : loads) total += l;
      llep::Plan ideal;
      ideal.reset(topo, "ideal");
      const count_t share = (total + topo.ranks() - 1) / topo.ranks();
      for (int r = 0; r < topo.ranks(); ++r) ideal.add_segment(r * topo.experts_per_rank(), r, 0, share);
      ideal.finish(topo);
      std::vector<count_t> ideal_counts(static_cast<std::size_t>(topo.ranks()) * shape.experts, 0);
      for (int r = 0; r < topo.ranks(); ++r)
        ideal_counts[static_cast<std::size_t>(r) * shape.experts + static_cast<std::size_t>(r * topo.experts_per_rank())] = share;
      const StepCost id = measure<Mode>(a, exec, shape, ideal,
                                        llep::CountsView(std::span<const count_t>(ideal_counts), topo.ranks(), shape.experts), topo,
                                        false);  // the ideal is the forward table's reference only
      const std::string name = skew.name();
      std::fprintf(csv, "%.*s,%s,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f",
                   int(shape.name.size()), shape.name.data(), name.c_str(), ep.step_ms(), ll.step_ms(),
                   ep.step_ms() / ll.step_ms(), ep.compute_ms, ll.compute_ms, ep.comm_ms, ll.comm_ms,
                   ep.peak_measured / gib, ll.peak_measured / gib, ep.peak_predicted / gib, ll.peak_predicted / gib,
                   double(ep.peak_measured) / double(ll.peak_measured), id.compute_ms / ll.step_ms());
      if (a.backward)
        std::fprintf(csv, ",%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f", ep.train_ms(), ll.train_ms(),
                     ep.train_ms() / ll.train_ms(), ep.train_compute_ms, ll.train_compute_ms, ep.train_comm_ms,
                     ll.train_comm_ms, ep.train_peak / gib, ll.train_peak / gib,
                     double(ep.train_peak) / double(ll.train_peak));
      std::fprintf(csv, "\n");
      std::fflush(csv);
      if (md) {
        std::fprintf(md, "| %.*s | %s | %.2f | %.2f | %.2fx | %.2f (%.2f) | %.2f (%.2f) | %.2fx | %.0f%% |",
                     int(shape.name.size()), shape.name.data(), name.c_str(), ep.step_ms(), ll.step_ms(),
                     ep.step_ms() / ll.step_ms(), ep.peak_measured / gib, ep.peak_predicted / gib,
                     ll.peak_measured / gib, ll.peak_predicted / gib, double(ep.peak_measured) / double(ll.peak_measured),
                     100.0 * id.compute_ms / ll.step_ms());
        if (a.backward)
          std::fprintf(md, " %.2f | %.2f | %.2fx | %.2f | %.2f | %.2fx |", ep.train_ms(), ll.train_ms(),
                       ep.train_ms() / ll.train_ms(), ep.train_peak / gib, ll.train_peak / gib,
                       double(ep.train_peak) / double(ll.train_peak));
        std::fprintf(md, "\n");
      }
      if (md) std::fflush(md);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "SKIP: no CUDA device\n");
    return 77;
  }
  std::FILE* csv = a.csv.empty() ? stdout : std::fopen(a.csv.c_str(), "w");
  std::FILE* md = a.markdown.empty() ? nullptr : std::fopen(a.markdown.c_str(), "w");
  if (!csv || (!a.markdown.empty() && !md)) usage("cannot open an output file");
  try {
    if (a.mode == "curve") {
      std::fprintf(csv, "shape,mode,rows,ms,tflops\n");
      curve<llep::GemmMode::per_expert>(a, csv);
      curve<llep::GemmMode::grouped>(a, csv);
    } else if (a.mode == "experts") {
      std::fprintf(csv, "shape,experts,rows_per_expert,cublas_ms,grouped_ms,grouped_loose_ms,ratio,cublas_tflops,"
                        "grouped_tflops\n");
      grouped_vs_cublas(a, csv);
    } else if (a.grouped) {
      table<llep::GemmMode::grouped>(a, csv, md);
    } else {
      table<llep::GemmMode::per_expert>(a, csv, md);
    }
  } catch (const llep::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  if (csv != stdout) std::fclose(csv);
  if (md) std::fclose(md);
  return 0;
}
