#pragma once
// JSON form of a Plan, written as a stream (a plan of millions of experts is never held as
// a JSON tree), in the layout nlohmann::json::dump gives: pretty with an indent of 2, or
// compact. Lives outside include/: the library itself does not depend on nlohmann/json.
#include <nlohmann/json.hpp>

#include <concepts>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "llep/core/plan.hpp"

namespace llep::examples {

/// Writes nested JSON objects and arrays to a stream, one value at a time; scalars are
/// formatted by nlohmann::json, so the bytes match dump(indent) of the same tree.
class JsonWriter {
 public:
  JsonWriter(std::ostream& out, int indent) : out_(out), indent_(indent) {}

  void begin_object(std::string_view key = {}) { open(key, '{'); }
  void begin_array(std::string_view key = {}) { open(key, '['); }
  void end_object() { close('}'); }
  void end_array() { close(']'); }
  /// A scalar (or any small value) as an element or, with a key, a member.
  void value(std::string_view key, const nlohmann::ordered_json& v) {
    next(key);
    out_ << v.dump(indent_);
  }
  /// Integers are written directly (the same digits nlohmann::json writes; much faster).
  template <std::integral I>
    requires(!std::same_as<I, bool>)
  void value(std::string_view key, I v) {
    next(key);
    out_ << v;
  }
  void element(const nlohmann::ordered_json& v) { value({}, v); }
  template <std::integral I>
    requires(!std::same_as<I, bool>)
  void element(I v) {
    value({}, v);
  }

 private:
  void next(std::string_view key) {
    if (!counts_.empty()) {
      if (counts_.back()++ > 0) out_ << ',';
      newline(counts_.size());
    }
    if (!key.empty()) out_ << nlohmann::json(std::string(key)).dump() << (indent_ >= 0 ? ": " : ":");
  }
  void open(std::string_view key, char c) {
    next(key);
    out_ << c;
    counts_.push_back(0);
  }
  void close(char c) {
    const bool empty = counts_.back() == 0;
    counts_.pop_back();
    if (!empty) newline(counts_.size());
    out_ << c;
  }
  void newline(std::size_t depth) {
    if (indent_ < 0) return;
    out_ << '\n' << std::string(depth * static_cast<std::size_t>(indent_), ' ');
  }

  std::ostream& out_;
  int indent_;
  std::vector<std::size_t> counts_;  // members written so far, per open container
};

/// Writes the members "ranks", "experts", "capacity", "assignments", "weight_transfers",
/// "rank_loads", "imbalance_before", "imbalance_after", "chosen" of a plan made for `loads`
/// into the object `w` has open. assignments lists the experts with load, by id, each with
/// its load and segments; imbalance is max/mean rank load, before under native placement
/// on `native_topo`, after under the plan; chosen is the policy that made the plan (for
/// Adaptive: "ep" or its inner planner).
inline void write_plan_members(JsonWriter& w, const Plan& plan, std::span<const count_t> loads,
                               const Topology& native_topo) {
  w.value("ranks", plan.ranks());
  w.value("experts", plan.experts());
  w.value("capacity", plan.capacity());
  w.begin_array("assignments");
  for (int e = 0; e < plan.experts(); ++e) {
    const auto segs = plan.segments(e);
    if (segs.empty()) continue;
    w.begin_object();
    w.value("expert", e);
    w.value("load", loads[static_cast<std::size_t>(e)]);
    w.begin_array("segments");
    for (const Segment& seg : segs) {
      w.begin_object();
      w.value("rank", seg.rank);
      w.value("begin", seg.begin);
      w.value("end", seg.end);
      w.end_object();
    }
    w.end_array();
    w.end_object();
  }
  w.end_array();
  w.begin_array("weight_transfers");
  for (const WeightTransfer& t : plan.weight_transfers()) {
    w.begin_object();
    w.value("expert", t.expert);
    w.value("src", t.src);
    w.value("dst", t.dst);
    w.end_object();
  }
  w.end_array();
  w.begin_array("rank_loads");
  for (const count_t l : plan.rank_loads()) w.element(l);
  w.end_array();
  std::vector<count_t> native(static_cast<std::size_t>(native_topo.ranks()));
  native_rank_loads(loads, native_topo, native);
  w.value("imbalance_before", imbalance(native));
  w.value("imbalance_after", imbalance(plan.rank_loads()));
  w.value("chosen", std::string(plan.policy()));
}

}  // namespace llep::examples
