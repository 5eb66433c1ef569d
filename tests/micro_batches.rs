//! `engine::batch::predicted_micro_batches` against what llama.cpp does: the
//! same batches are decoded by llama.cpp with an eval callback that counts
//! graph evaluations (one `attn_norm-0` node per evaluated graph), for per-slot
//! KV streams (llama.cpp's equal split) and a unified KV cache (simple split).
//! The engine cannot count this way itself: llama-cpp-2 exposes no eval
//! callback, and the callback path synchronizes after every graph split.

use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicUsize, Ordering};

use airavata::engine::batch::{predicted_micro_batches, Work};

/// Counts graph evaluations: llama.cpp asks about every node of a graph it is
/// about to compute; layer 0's attention norm is in every graph once.
unsafe extern "C" fn count_graphs(
    t: *mut llama_cpp_sys_2::ggml_tensor,
    ask: bool,
    user_data: *mut c_void,
) -> bool {
    if ask && !t.is_null() && !user_data.is_null() {
        // SAFETY: llama.cpp passes a live tensor whose `name` is a
        // NUL-terminated array, and `user_data` is the `AtomicUsize` that
        // `graphs_for` keeps alive across the decode.
        let name = unsafe { std::ffi::CStr::from_ptr((*t).name.as_ptr()) };
        if name.to_bytes() == b"attn_norm-0" {
            let n = unsafe { &*(user_data as *const AtomicUsize) };
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Never ask for the data: each split is computed in one go.
    false
}

/// Graph evaluations llama.cpp runs for one `llama_decode` of `seqs`
/// (sequence id, tokens) with `n_ubatch` tokens per micro-batch.
fn graphs_for(
    model: *mut llama_cpp_sys_2::llama_model,
    seqs: &[(usize, usize)],
    unified: bool,
    n_ubatch: u32,
) -> usize {
    let counter = AtomicUsize::new(0);
    let n_tokens: usize = seqs.iter().map(|&(_, n)| n).sum();
    // SAFETY: plain C calls on a loaded model; every pointer written below
    // comes from `llama_batch_init(n_tokens, 0, 1)` and is indexed below
    // `n_tokens` (one sequence id per token); the counter outlives `ctx`,
    // which is freed before returning.
    unsafe {
        let mut p = llama_cpp_sys_2::llama_context_default_params();
        p.n_ctx = 4 * 256;
        p.n_batch = n_ubatch.max(n_tokens as u32);
        p.n_ubatch = n_ubatch;
        p.n_seq_max = 4;
        p.kv_unified = unified;
        p.n_threads = 2;
        p.n_threads_batch = 2;
        p.flash_attn_type = llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED;
        p.cb_eval = Some(count_graphs);
        p.cb_eval_user_data = &counter as *const AtomicUsize as *mut c_void;
        let ctx = llama_cpp_sys_2::llama_init_from_model(model, p);
        assert!(!ctx.is_null(), "context");
        let batch = llama_cpp_sys_2::llama_batch_init(n_tokens as i32, 0, 1);
        let mut i = 0;
        for &(seq, n) in seqs {
            for j in 0..n {
                *batch.token.add(i) = 1 + (j as i32 % 200);
                *batch.pos.add(i) = j as i32;
                *batch.n_seq_id.add(i) = 1;
                *(*batch.seq_id.add(i)).add(0) = seq as i32;
                *batch.logits.add(i) = i8::from(j + 1 == n);
                i += 1;
            }
        }
        let mut batch = batch;
        batch.n_tokens = n_tokens as i32;
        let rc = llama_cpp_sys_2::llama_decode(ctx, batch);
        llama_cpp_sys_2::llama_synchronize(ctx);
        llama_cpp_sys_2::llama_batch_free(batch);
        llama_cpp_sys_2::llama_free(ctx);
        assert_eq!(rc, 0, "llama_decode of {seqs:?}");
    }
    counter.load(Ordering::Relaxed)
}

fn work(seqs: &[(usize, usize)]) -> Vec<Work> {
    seqs.iter()
        .map(|&(slot, n)| {
            if n == 1 {
                Work::Decode { slot }
            } else {
                Work::Prefill {
                    slot,
                    n_tokens: n,
                    finishes: true,
                }
            }
        })
        .collect()
}

#[test]
fn predicted_micro_batches_match_llama_cpp() {
    airavata::engine::llama_backend(None).expect("backend");
    let dir = tempfile::tempdir().unwrap();
    let gguf = airavata::synth::tiny_test_gguf(dir.path()).unwrap();
    let path = CString::new(gguf.to_str().unwrap()).unwrap();
    // SAFETY: the backend is initialised; `path` is NUL-terminated and
    // outlives the call; the model is freed at the end of the test.
    let model = unsafe {
        llama_cpp_sys_2::llama_model_load_from_file(
            path.as_ptr(),
            llama_cpp_sys_2::llama_model_default_params(),
        )
    };
    assert!(!model.is_null());
    // (sequence id and tokens, unified KV, tokens per micro-batch)
    type Case = (&'static [(usize, usize)], bool, u32);
    let cases: &[Case] = &[
        (&[(0, 1), (1, 1), (2, 1), (3, 1)], false, 512),
        (&[(0, 1), (1, 1), (3, 1)], false, 512),
        (&[(0, 1), (1, 40), (2, 1)], false, 512),
        (&[(0, 1), (1, 40), (2, 1), (3, 10)], false, 512),
        (&[(1, 1), (2, 1)], false, 512),
        (&[(0, 100)], false, 32),
        (&[(0, 40), (1, 40)], false, 32),
        (&[(0, 1), (2, 30), (3, 1)], false, 16),
        (&[(0, 1), (1, 40), (2, 1), (3, 10)], true, 512),
        (&[(0, 1), (1, 40), (2, 1), (3, 10)], true, 16),
        (&[(0, 1), (1, 1), (3, 1)], true, 512),
    ];
    let mut report = Vec::new();
    for &(seqs, unified, n_ubatch) in cases {
        let measured = graphs_for(model, seqs, unified, n_ubatch);
        let predicted = predicted_micro_batches(&work(seqs), unified, n_ubatch as usize);
        assert!(measured >= 1, "no graph counted for {seqs:?}");
        report.push((seqs, unified, n_ubatch, predicted, measured));
    }
    // SAFETY: no context uses the model any more.
    unsafe { llama_cpp_sys_2::llama_model_free(model) };
    for r in &report {
        assert_eq!(
            r.3, r.4,
            "(seqs, unified, n_ubatch, predicted, measured) = {r:?}; all: {report:?}"
        );
    }
}
