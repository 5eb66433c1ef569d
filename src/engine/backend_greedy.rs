//! Greedy picks computed by the backend, inside the step's own graph.
//!
//! Without this, every step copies each output row's logits (48 065 floats
//! per slot: 49 MB at 256 slots) from the GPU to the host, then scans them
//! there ([`super::greedy`]). With it, llama.cpp's backend sampling API
//! (`llama_set_sampler`) attaches to each greedy slot's sequence a sampler
//! chain holding one [`iface`] sampler: the graph ends in one `argmax` over
//! all output rows at once, and only one token per row comes back. When
//! every output of a step belongs to such a slot, llama.cpp skips the
//! logits copy altogether.
//!
//! A slot serving a request that needs its logits on the host (sampling,
//! log-probabilities, a grammar) has no sampler attached; llama.cpp then
//! copies the step's logits as before. Each attach or detach makes
//! llama.cpp re-plan its graph memory once, at the next `decode`.

use std::cell::Cell;
use std::ffi::{c_char, CStr};
use std::ptr::{null_mut, NonNull};

use llama_cpp_sys_2 as sys;

/// The tensors of the graph being built that the slots' samplers share.
#[derive(Default)]
struct GraphState {
    /// The output rows' logits (`[n_vocab, rows]`) that `argmax` reads.
    logits: Cell<*mut sys::ggml_tensor>,
    /// `argmax` over every row of `logits` (`[rows]`, i32).
    argmax: Cell<*mut sys::ggml_tensor>,
}

/// Per-slot backend samplers on one context.
pub(super) struct GreedySamplers {
    ctx: NonNull<sys::llama_context>,
    /// Each slot's attached chain (`None`: picks on the host).
    chains: Vec<Option<NonNull<sys::llama_sampler>>>,
    /// Shared by every sampler of `chains` (their `ctx`); outlives them.
    state: Box<GraphState>,
}

impl GreedySamplers {
    /// Samplers for `slots` sequences of the context `ctx` (its raw handle,
    /// [`super::raw_context::raw_context`]), none attached yet.
    pub fn new(ctx: NonNull<sys::llama_context>, slots: usize) -> Self {
        Self {
            ctx,
            chains: vec![None; slots],
            state: Box::default(),
        }
    }

    /// Whether `slot`'s greedy picks come from the backend.
    pub fn attached(&self, slot: usize) -> bool {
        self.chains.get(slot).is_some_and(Option::is_some)
    }

    /// Attaches (`on`) or detaches `slot`'s sampler; no-op when it already is.
    /// Returns whether it is attached afterwards (llama.cpp may refuse).
    pub fn set(&mut self, slot: usize, on: bool) -> bool {
        if self.attached(slot) == on || slot >= self.chains.len() {
            return self.attached(slot);
        }
        if !on {
            self.detach(slot);
            return false;
        }
        let Ok(seq) = i32::try_from(slot) else {
            return false;
        };
        // A chain is initialised for the backend once: a new one per attach.
        let Some(chain) = self.new_chain() else {
            return false;
        };
        // SAFETY: `self.ctx` is the live context this engine owns (it outlives
        // `self`, see the field order in the worker), and `chain` is a chain
        // created above that stays alive while attached (freed only after
        // `detach`).
        let ok = unsafe { sys::llama_set_sampler(self.ctx.as_ptr(), seq, chain.as_ptr()) };
        if ok {
            self.chains[slot] = Some(chain);
        } else {
            // SAFETY: the chain was refused, so llama.cpp holds no pointer to it.
            unsafe { sys::llama_sampler_free(chain.as_ptr()) };
        }
        ok
    }

    fn detach(&mut self, slot: usize) {
        // Attached only when the slot is a valid sequence id.
        let (Some(chain), Ok(seq)) = (self.chains[slot].take(), i32::try_from(slot)) else {
            return;
        };
        // SAFETY: as in `set`; after the call the context no longer refers to
        // the chain (the graph that used it is rebuilt before any reuse, as
        // the context's sampler set changed), so it can be freed.
        unsafe {
            sys::llama_set_sampler(self.ctx.as_ptr(), seq, null_mut());
            sys::llama_sampler_free(chain.as_ptr());
        }
    }

    fn new_chain(&self) -> Option<NonNull<sys::llama_sampler>> {
        let state: *const GraphState = &*self.state;
        // SAFETY: plain constructors; `IFACE` is a static, and the sampler's
        // context points at `self.state`, which outlives every chain (they
        // are freed in `detach`, at the latest in `drop`). The chain takes
        // ownership of the sampler.
        unsafe {
            let chain = NonNull::new(sys::llama_sampler_chain_init(
                sys::llama_sampler_chain_default_params(),
            ))?;
            let smpl = sys::llama_sampler_init(
                std::ptr::addr_of!(IFACE).cast_mut(),
                state.cast_mut().cast(),
            );
            if smpl.is_null() {
                sys::llama_sampler_free(chain.as_ptr());
                return None;
            }
            sys::llama_sampler_chain_add(chain.as_ptr(), smpl);
            Some(chain)
        }
    }
}

impl Drop for GreedySamplers {
    fn drop(&mut self) {
        for slot in 0..self.chains.len() {
            self.detach(slot);
        }
    }
}

static IFACE: sys::llama_sampler_i = sys::llama_sampler_i {
    name: Some(name),
    accept: None,
    apply: Some(apply),
    reset: None,
    clone: None,
    free: None,
    backend_init: Some(backend_init),
    backend_accept: None,
    backend_apply: Some(backend_apply),
    backend_set_input: None,
    backend_reset: Some(backend_reset),
    copy_state: None,
};

const NAME: &CStr = c"airavata-greedy";

unsafe extern "C" fn name(_smpl: *const sys::llama_sampler) -> *const c_char {
    NAME.as_ptr()
}

/// The host path (llama.cpp calls it only if the backend did not sample):
/// the first largest logit.
unsafe extern "C" fn apply(
    _smpl: *mut sys::llama_sampler,
    cur_p: *mut sys::llama_token_data_array,
) {
    // SAFETY: llama.cpp passes a valid candidate array of `size` entries.
    let Some(cur) = (unsafe { cur_p.as_mut() }) else {
        return;
    };
    if cur.data.is_null() || cur.size == 0 {
        return;
    }
    // SAFETY: as above.
    let data = unsafe { std::slice::from_raw_parts(cur.data, cur.size) };
    let mut best = 0;
    for (i, d) in data.iter().enumerate() {
        if d.logit > data[best].logit {
            best = i;
        }
    }
    cur.selected = i64::try_from(best).unwrap_or(0);
}

/// `argmax` runs on every ggml backend llama.cpp offloads to.
unsafe extern "C" fn backend_init(
    _smpl: *mut sys::llama_sampler,
    _buft: sys::ggml_backend_buffer_type_t,
    _n_outputs_max_per_seq: u32,
) -> bool {
    true
}

unsafe extern "C" fn backend_reset(smpl: *mut sys::llama_sampler) {
    // SAFETY: the sampler's context is the `GraphState` set in `new_chain`.
    if let Some(state) = unsafe { state_of(smpl) } {
        state.logits.set(null_mut());
        state.argmax.set(null_mut());
    }
}

/// Picks the row's token from one `argmax` over all output rows, created by
/// the first row's sampler of each graph: `data.logits` is a row view of the
/// step's output logits. Anything else (llama.cpp's probe graph) gets an
/// `argmax` of its own. Only the token goes back to the host.
unsafe extern "C" fn backend_apply(
    smpl: *mut sys::llama_sampler,
    ctx: *mut sys::ggml_context,
    _gf: *mut sys::ggml_cgraph,
    data: *mut sys::llama_sampler_data,
) {
    // SAFETY: llama.cpp passes a valid `data` whose `logits` is a tensor of
    // the graph being built in `ctx`, and the sampler's own context.
    let (Some(data), Some(state)) = (unsafe { data.as_mut() }, unsafe { state_of(smpl) }) else {
        return;
    };
    // SAFETY: a tensor of the graph being built (see above).
    let Some(row) = (unsafe { data.logits.as_ref() }) else {
        return;
    };
    // SAFETY: for a view, `view_src` is its (live) source tensor.
    let src = unsafe { row.view_src.as_ref() };
    let sampled = match src {
        Some(all)
            if all.type_ == sys::GGML_TYPE_F32
                && all.ne[0] == row.ne[0]
                && all.ne[2] == 1
                && all.ne[3] == 1
                && all.nb[1] > 0
                && row.view_offs % all.nb[1] == 0
                // SAFETY: a valid tensor.
                && unsafe { sys::ggml_is_contiguous(all) } =>
        {
            let all_ptr: *const sys::ggml_tensor = all;
            if state.logits.get().cast_const() != all_ptr || state.argmax.get().is_null() {
                // SAFETY: ops on tensors of the graph being built in `ctx`.
                let argmax = unsafe { sys::ggml_argmax(ctx, all_ptr.cast_mut()) };
                if argmax.is_null() {
                    return;
                }
                // Read back after the graph ran: its memory must not be reused.
                // SAFETY: as above.
                unsafe {
                    sys::ggml_set_name(argmax, c"airavata_greedy_rows".as_ptr());
                    sys::ggml_set_output(argmax);
                }
                state.logits.set(all_ptr.cast_mut());
                state.argmax.set(argmax);
            }
            let index = row.view_offs / all.nb[1];
            // SAFETY: `argmax` is an i32 tensor of `all.ne[1]` rows and
            // `index` is one of them.
            unsafe {
                sys::ggml_view_1d(
                    ctx,
                    state.argmax.get(),
                    1,
                    index * std::mem::size_of::<i32>(),
                )
            }
        }
        // SAFETY: ops on a tensor of the graph being built in `ctx`.
        _ => unsafe {
            let flat = sys::ggml_reshape_1d(ctx, data.logits, sys::ggml_nelements(data.logits));
            sys::ggml_argmax(ctx, flat)
        },
    };
    data.sampled = sampled;
    // llama.cpp copies back whatever the sampler leaves in `data.logits` (a
    // row of n_vocab floats per output): only the token is needed.
    data.logits = null_mut();
}

/// The `GraphState` a sampler of [`IFACE`] was created with.
///
/// # Safety
/// `smpl` is null or a sampler created by [`GreedySamplers::new_chain`].
unsafe fn state_of<'a>(smpl: *mut sys::llama_sampler) -> Option<&'a GraphState> {
    // SAFETY: per the contract, `ctx` is the `GraphState` the owning
    // `GreedySamplers` keeps alive while its samplers exist.
    unsafe {
        smpl.as_ref()
            .and_then(|s| s.ctx.cast::<GraphState>().as_ref())
    }
}
