// The one exception type the runtime throws for bad input (file, tensor, argument); the binding
// maps it to a Python ValueError. Internal invariants use assert, not this.
#pragma once
#include <stdexcept>
#include <string>

namespace lutllm {
struct Error : std::runtime_error {
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};
// Raised inside a forward pass when a cancel was requested; the context stays usable.
struct Cancelled : std::runtime_error {
  Cancelled() : std::runtime_error("generation cancelled") {}
};
}  // namespace lutllm
