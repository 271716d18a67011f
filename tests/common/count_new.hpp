#pragma once
// Replaces the global operator new/delete to count allocations, for the tests that check
// a warm step or plan allocates nothing. Include it in exactly one translation unit of a
// test executable of its own. g_news counts the calls made while the calling thread's
// g_counting is true (the default).
#include <atomic>
#include <cstdlib>
#include <new>

namespace {
std::atomic<long> g_news{0};
thread_local bool g_counting = true;
}  // namespace

void* operator new(std::size_t n) {
  if (g_counting) g_news.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  if (g_counting) g_news.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n == 0 ? 1 : n);
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return ::operator new(n, t); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
