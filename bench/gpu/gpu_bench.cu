// llep-gpu-bench: the paper's table measured on one GPU, which stands in for each rank in
// turn (issue 5), and the GEMM efficiency curve that calibrates the cost model.
//
//   llep-gpu-bench curve --csv curve.csv            achieved TFLOP/s of one expert's FFN vs rows
//   llep-gpu-bench table --csv t.csv --markdown t.md  EP vs LLEP per paper scenario
//   llep-gpu-bench table --backward ...               the same, plus forward + backward (training)
//   llep-gpu-bench experts --csv g.csv [--experts E]  GroupedSwiGlu vs cuBLAS per expert
//   llep-gpu-bench table --device-step ...            the same, plus the layer steps on P logical ranks
//   llep-gpu-bench table --list ...                   the rows the table would measure; no device needed
// --shape and --routing take one name or a comma-separated list of them.
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
//
// --device-step adds, per row and in the same run, the whole layer step (one MoE layer) on P
// logical ranks of the one GPU (bench/layer_paths.cuh): MoeLayer (host round trip in the
// step), SyncFreeLayer eager, and SyncFreeLayer replayed from a CUDA graph, each with EP's
// and LLEP's planner (StandardEp; the paper's Adaptive<LeastLoaded>, as above), the row's
// tokens per rank and sampled routing of its skew (llep::sim::random_routing), GroupedSwiGlu
// bf16 experts, real exchanges between the ranks; CUDA events from a common start to the
// last rank's end, median of --reps steps after --warmup. The P ranks share the GPU, so a
// step's time is all ranks' work and EP/LLEP here is not the P-GPU speedup above; the
// sync-free/MoeLayer ratios are what the device step changes. A planner whose sync-free
// memory (worst-case buffers, sized from the limits) does not fit on the GPU with every rank
// there gives "n/a" and the reason (so would a planner without a device form).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../layer_paths.cuh"
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
  std::vector<std::string> shapes, routings;  // selected names; empty: all
  long long tokens = 0;  // tokens per rank; 0: the shape's own
  bool verbose = false;
  bool backward = false;  // also time forward + backward per rank (training)
  int experts = 8;        // experts: tasks per call
  bool device_step = false;  // table: also the layer steps on P logical ranks
  bool list = false;         // table: print the rows and exit
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "error: %s\nusage: llep-gpu-bench curve|table|experts [--csv F] [--markdown F] [--reps N] [--warmup N]\n"
               "       [--link-gbps G] [--latency-us U] [--grouped] [--shape NAME] [--routing NAME] [--tokens N] [--verbose]\n"
               "       [--backward]   (table: also forward + backward per rank, the training columns)\n"
               "       [--experts E]  (experts: tasks per call, default 8)\n"
               "       [--device-step] (table: also MoeLayer and SyncFreeLayer steps on P logical ranks of the GPU)\n"
               "       [--list]       (table: print the rows it would measure and exit; no device needed)\n"
               "       --shape and --routing take a name or a comma-separated list\n",
               why.c_str());
  std::exit(2);
}

std::vector<std::string> split_names(const std::string& list) {
  std::vector<std::string> out;
  for (std::size_t at = 0;;) {
    const std::size_t comma = list.find(',', at);
    out.push_back(list.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
    if (comma == std::string::npos) return out;
    at = comma + 1;
  }
}

bool selected(const std::vector<std::string>& names, std::string_view name) {
  return names.empty() || std::find(names.begin(), names.end(), name) != names.end();
}

// The names in `list`, each one of `known` (else usage names it and the known ones).
std::vector<std::string> known_names(const std::string& flag, const std::string& list,
                                     const std::vector<std::string>& known) {
  auto names = split_names(list);
  for (const auto& n : names)
    if (std::find(known.begin(), known.end(), n) == known.end()) {
      std::string all;
      for (const auto& k : known) all += (all.empty() ? "" : ", ") + k;
      usage(flag + " '" + n + "' is none of: " + all);
    }
  return names;
}

std::vector<std::string> shape_names() {
  std::vector<std::string> out;
  for (const auto& shape : llep::bench::kPaperShapes) out.emplace_back(shape.name);
  return out;
}

std::vector<std::string> routing_names() {
  std::vector<std::string> out;
  for (const auto& skew : llep::bench::paper_routings()) out.push_back(skew.name());
  return out;
}

// One row of the table: a shape, a routing and the tokens per rank.
struct Row {
  llep::bench::LayerShape shape;
  llep::sim::Skew skew;
  count_t tokens = 0;
};

std::vector<Row> table_rows(const Args& a) {
  std::vector<Row> rows;
  for (const auto& shape : llep::bench::kPaperShapes) {
    if (!selected(a.shapes, shape.name)) continue;
    for (const auto& skew : llep::bench::paper_routings())
      if (selected(a.routings, skew.name()))
        rows.push_back({shape, skew, a.tokens > 0 ? a.tokens : shape.tokens_per_rank});
  }
  return rows;
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
      else if (f == "--shape") a.shapes = known_names(f, value(), shape_names());
      else if (f == "--routing") a.routings = known_names(f, value(), routing_names());
      else if (f == "--tokens") a.tokens = std::stoll(value());
      else if (f == "--verbose") a.verbose = true;
      else if (f == "--grouped") a.grouped = true;
      else if (f == "--backward") a.backward = true;
      else if (f == "--experts") a.experts = std::stoi(value());
      else if (f == "--device-step") a.device_step = true;
      else if (f == "--list") a.list = true;
      else usage("unknown flag " + f);
    } catch (const std::logic_error&) {
      usage("bad value for " + f);
    }
  }
  if (a.reps < 1 || a.warmup < 0 || a.link_gbps <= 0 || a.latency_us < 0 || a.tokens < 0)
    usage("reps >= 1, warmup >= 0, link > 0, tokens >= 0");
  if (a.backward && a.mode != "table") usage("--backward is a flag of table");
  if (a.device_step && a.mode != "table") usage("--device-step is a flag of table");
  if (a.list && a.mode != "table") usage("--list is a flag of table");
  if (a.experts < 1) usage("--experts >= 1");
  return a;
}

using llep::bench::median;

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
    if (!selected(a.shapes, shape.name)) continue;
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
    if (!selected(a.shapes, shape.name)) continue;
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
          exec.for_each_n(n, llep::GateGradients<T, GW>{b.cg->as<T>(), cy, b.gate->as<GW>(),
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

// --device-step: one planner's three paths for a row (see the header), or why not.
struct DevicePaths {
  std::optional<llep::bench::PathTimes> times;
  std::string why;       // when there are no times
  double rank_gib = 0;   // sync-free memory per rank (symmetric region + workspace)
};

template <class Plnr>
DevicePaths device_paths(const Args& a, const Row& row, const Plnr& planner, int connections) {
  DevicePaths d;
  if constexpr (!llep::has_device_form<Plnr>) {
    d.why = "SyncFreeLayer needs a planner with a device form";
  } else {
    const llep::bench::LogicalLayer L{llep::bench::kPaperRanks, row.shape.experts, row.shape.top_k, row.shape.hidden,
                                      row.shape.intermediate, row.tokens, 1};
    const double gib = 1024.0 * 1024 * 1024;
    d.rank_gib = double(llep::bench::sync_free_rank_bytes(L, planner)) / gib;
    std::size_t free = 0, total = 0;
    LLEP_CUDA_CHECK(cudaMemGetInfo(&free, &total));
    const std::size_t need = llep::bench::layer_paths_bytes(L, planner);
    char why[200];
    if (connections < L.ranks) {
      std::snprintf(why, sizeof why, "CUDA_DEVICE_MAX_CONNECTIONS=%d is below P=%d", connections, L.ranks);
      d.why = why;
    } else if (need > free) {
      std::snprintf(why, sizeof why,
                    "needs about %.1f GiB for %d ranks (sync-free worst-case buffers) but %.1f GiB are free; "
                    "lower --tokens",
                    double(need) / gib, L.ranks, double(free) / gib);
      d.why = why;
    } else {
      try {
        d.times = llep::bench::time_layer_paths(L, planner, row.skew, a.warmup, 1, a.reps);
      } catch (const std::exception& e) {  // llep::Error, or a rank group's failure
        d.why = std::string("failed: ") + e.what();
      }
    }
  }
  // The reason goes into a CSV field and a Markdown cell.
  std::replace_if(d.why.begin(), d.why.end(), [](char c) { return c == ',' || c == '|' || c == '\n'; }, ';');
  return d;
}

// The --device-step cells of one row, into the CSV or the Markdown table (null: not that
// one): each planner's three paths, EP/LLEP per path, sync-free and graph over MoeLayer per
// planner, the sync-free memory per rank, and why a planner has no times.
void print_device_step(std::FILE* csv, std::FILE* md, const DevicePaths& ep, const DevicePaths& ll) {
  auto ms = [](const DevicePaths& d, int path) {
    const auto& t = *d.times;
    return (path == 0 ? t.moe_layer : path == 1 ? t.sync_free : t.graph).device_us / 1000.0;
  };
  const DevicePaths* both[] = {&ep, &ll};
  // Each cell: a number, or n/a when a planner it needs has no times.
  auto cell = [](std::FILE* f, const char* format, bool have, double v) {
    have ? std::fprintf(f, format, v) : std::fprintf(f, format[0] == ',' ? ",n/a" : " n/a");
  };
  if (csv) {
    for (const DevicePaths* d : both)
      for (int i = 0; i < 3; ++i) cell(csv, ",%.3f", bool(d->times), d->times ? ms(*d, i) : 0);
    const bool pair = ep.times && ll.times;
    for (int i = 0; i < 3; ++i) cell(csv, ",%.3f", pair, pair ? ms(ep, i) / ms(ll, i) : 0);
    for (int i = 1; i < 3; ++i)
      for (const DevicePaths* d : both) cell(csv, ",%.3f", bool(d->times), d->times ? ms(*d, i) / ms(*d, 0) : 0);
    std::string note = ep.why.empty() ? "" : "ep: " + ep.why;
    if (!ll.why.empty()) note += (note.empty() ? "" : "; ") + ("llep: " + ll.why);
    std::fprintf(csv, ",%.3f,%.3f,%s", ep.rank_gib, ll.rank_gib, note.c_str());
  }
  if (md) {
    for (const DevicePaths* d : both)
      d->times ? std::fprintf(md, " %.2f / %.2f / %.2f |", ms(*d, 0), ms(*d, 1), ms(*d, 2))
               : std::fprintf(md, " n/a (%s) |", d->why.c_str());
    if (ep.times && ll.times)
      std::fprintf(md, " %.2fx / %.2fx / %.2fx |", ms(ep, 0) / ms(ll, 0), ms(ep, 1) / ms(ll, 1), ms(ep, 2) / ms(ll, 2));
    else
      std::fprintf(md, " n/a |");
    for (int i = 1; i < 3; ++i) {
      for (const DevicePaths* d : both) cell(md, " %.3f", bool(d->times), d->times ? ms(*d, i) / ms(*d, 0) : 0);
      std::fprintf(md, " |");
    }
    std::fprintf(md, " %.2f / %.2f |", ep.rank_gib, ll.rank_gib);
  }
}

template <llep::GemmMode Mode>
void table(const Args& a, std::FILE* csv, std::FILE* md, int connections) {
  llep::CudaExec exec;
  int dev = 0;
  cudaDeviceProp prop{};
  LLEP_CUDA_CHECK(cudaGetDevice(&dev));
  LLEP_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  std::fprintf(csv, "shape,routing,ep_ms,llep_ms,speedup,ep_compute_ms,llep_compute_ms,ep_comm_ms,llep_comm_ms,"
                    "ep_peak_gib,llep_peak_gib,ep_pred_gib,llep_pred_gib,memory_ratio,llep_vs_ideal%s",
               a.backward ? ",ep_train_ms,llep_train_ms,train_speedup,ep_train_compute_ms,llep_train_compute_ms,"
                            "ep_train_comm_ms,llep_train_comm_ms,ep_train_peak_gib,llep_train_peak_gib,train_memory_ratio"
                          : "");
  if (a.device_step)
    std::fprintf(csv, ",dev_ep_moe_ms,dev_ep_free_ms,dev_ep_graph_ms,dev_llep_moe_ms,dev_llep_free_ms,dev_llep_graph_ms,"
                      "dev_moe_speedup,dev_free_speedup,dev_graph_speedup,dev_ep_free_vs_moe,dev_llep_free_vs_moe,"
                      "dev_ep_graph_vs_moe,dev_llep_graph_vs_moe,dev_ep_free_gib_per_rank,dev_llep_free_gib_per_rank,"
                      "dev_note");
  std::fprintf(csv, "\n");
  if (md) {
    std::fprintf(md, "Measured on %s, one GPU standing in for each of P = %d ranks; bf16, %s GEMMs; comm over %.0f "
                     "GB/s + %.0f us per round (computed); median of %d after %d warm-up.\n\n",
                 prop.name, llep::bench::kPaperRanks, Mode == llep::GemmMode::grouped ? "grouped" : "per-expert",
                 a.link_gbps, a.latency_us, a.reps, a.warmup);
    if (a.backward)
      std::fprintf(md, "Training columns (--backward): forward + backward per rank in the same run (fp32 weight "
                       "gradients, inputs kept in the handle), max over ranks, plus their communication.\n\n");
    if (a.device_step)
      std::fprintf(md, "Device-step columns (--device-step): one layer step on P = %d logical ranks sharing this GPU "
                       "(GroupedSwiGlu, sampled routing, real exchanges), MoeLayer / SyncFreeLayer eager / "
                       "SyncFreeLayer replayed from a CUDA graph, CUDA events, median of %d after %d warm-up; "
                       "all ranks' work on one GPU, so EP/LLEP there is not the P-GPU speedup.\n\n",
                   llep::bench::kPaperRanks, a.reps, a.warmup);
    std::fprintf(md, "| shape | routing | EP ms | LLEP ms | speedup | EP peak GiB (pred) | LLEP peak GiB (pred) | "
                     "memory EP/LLEP | LLEP vs ideal |%s%s\n|---|---|---:|---:|---:|---:|---:|---:|---:|%s%s\n",
                 a.backward ? " EP fwd+bwd ms | LLEP fwd+bwd ms | training speedup | EP train peak GiB | "
                              "LLEP train peak GiB | training memory EP/LLEP |"
                            : "",
                 a.device_step ? " EP step ms: moe / free / graph | LLEP step ms: moe / free / graph | "
                                 "device EP/LLEP: moe / free / graph | sync-free/moe: EP LLEP | graph/moe: EP LLEP | "
                                 "sync-free GiB/rank: EP / LLEP |"
                               : "",
                 a.backward ? "---:|---:|---:|---:|---:|---:|" : "",
                 a.device_step ? "---:|---:|---:|---:|---:|---:|" : "");
  }
  const double gib = 1024.0 * 1024 * 1024;
  for (const Row& row : table_rows(a)) {
    const auto& shape = row.shape;
    const auto& skew = row.skew;
    const llep::Topology topo(llep::bench::kPaperRanks, shape.experts);
    const count_t pairs = row.tokens * shape.top_k;
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
    std::optional<DevicePaths> dev_ep, dev_ll;
    if (a.device_step) {
      dev_ep = device_paths(a, row, llep::StandardEp{}, connections);
      dev_ll = device_paths(a, row, llep::bench::paper_llep(), connections);
      print_device_step(csv, nullptr, *dev_ep, *dev_ll);
    }
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
      if (a.device_step) print_device_step(nullptr, md, *dev_ep, *dev_ll);
      std::fprintf(md, "\n");
    }
    if (md) std::fflush(md);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  if (a.list) {  // the rows, without a device
    std::printf("shape,routing,tokens_per_rank\n");
    for (const Row& row : table_rows(a))
      std::printf("%.*s,%s,%lld\n", int(row.shape.name.size()), row.shape.name.data(), row.skew.name().c_str(),
                  static_cast<long long>(row.tokens));
    return 0;
  }
  // Before the first CUDA call: the logical ranks' streams each need a hardware queue.
  const int connections = a.device_step ? llep::bench::logical_rank_connections() : 0;
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
      table<llep::GemmMode::grouped>(a, csv, md, connections);
    } else {
      table<llep::GemmMode::per_expert>(a, csv, md, connections);
    }
  } catch (const llep::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  if (csv != stdout) std::fclose(csv);
  if (md) std::fclose(md);
  return 0;
}
