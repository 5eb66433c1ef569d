//! The raw `llama_context` behind llama-cpp-2's [`LlamaContext`], for the
//! llama.cpp calls the crate does not wrap (backend samplers, the graph-reuse
//! counter).

use std::ptr::NonNull;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_sys_2 as sys;

/// The raw `llama_context` behind `ctx`. llama-cpp-2 keeps it private but
/// prints it in its `Debug` output (`LlamaContext { context: 0x… }`); the
/// result is checked against the context's size.
pub(super) fn raw_context(ctx: &LlamaContext<'_>) -> Option<NonNull<sys::llama_context>> {
    let text = format!("{ctx:?}");
    let hex = text
        .strip_prefix("LlamaContext { context: 0x")?
        .strip_suffix(" }")?;
    let addr = usize::from_str_radix(hex, 16).ok()?;
    let raw = NonNull::new(std::ptr::with_exposed_provenance_mut::<sys::llama_context>(
        addr,
    ))?;
    // SAFETY: `addr` is the address llama-cpp-2 holds for this live context
    // (its `Debug` prints exactly that pointer), so it is a valid context.
    let n_ctx = unsafe { sys::llama_n_ctx(raw.as_ptr()) };
    (n_ctx == ctx.n_ctx()).then_some(raw)
}

/// Graph evaluations so far that reused the previous one's graph (llama.cpp
/// skips building and allocating it when the step's shape, outputs and
/// samplers are those of the last step).
pub(super) fn graphs_reused(raw: NonNull<sys::llama_context>) -> u64 {
    // SAFETY: `raw` comes from [`raw_context`] for a context the caller still
    // holds; `llama_perf_context` only reads its counters.
    let data = unsafe { sys::llama_perf_context(raw.as_ptr()) };
    u64::try_from(data.n_reused).unwrap_or(0)
}
