//! The log-probability oracle: llama.cpp's own logits, log-softmaxed in
//! f64, along a generation the server reported. Included by the test
//! binaries that need it with `#[path = "common/oracle.rs"] mod oracle;`
//! (next to `mod common;`).

use std::num::{NonZeroU16, NonZeroU32};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

/// Follows a generation with llama.cpp directly, as the server evaluates
/// it (prompt in one batch, then one token at a time; F16 KV cache, no flash
/// attention, a context the size of a slot): at each position the log-softmax
/// of the logits (f64), and the token the server reported there, identified
/// by its bytes (the first one may have lost its leading space; among
/// vocabulary entries with the same bytes, the one whose log-probability is
/// the reported one).
pub fn follow(
    model: &LlamaModel,
    prompt: &[i32],
    reported: &[(Vec<u8>, f64)],
    first_lstrip: bool,
    n_ctx: u32,
) -> (Vec<i32>, Vec<Vec<f64>>) {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(256)
        .with_n_threads(2)
        .with_n_threads_batch(2)
        .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED);
    let mut ctx = model
        .new_context(crate::common::backend(), params)
        .expect("context");
    let mut batch = LlamaBatch::new(prompt.len().max(1), 1);
    for (i, t) in prompt.iter().enumerate() {
        batch
            .add(LlamaToken(*t), i as i32, &[0], i + 1 == prompt.len())
            .expect("add");
    }
    ctx.decode(&mut batch).expect("decode");
    let vocab = model.vocab();
    let (mut ids, mut rows) = (Vec::new(), Vec::new());
    for (k, (bytes, lp)) in reported.iter().enumerate() {
        let row = ctx.get_logits_ith(batch.n_tokens() - 1);
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        let row: Vec<f64> = row.iter().map(|&v| v as f64 - max - z.ln()).collect();
        let lstrip = if k == 0 && first_lstrip {
            NonZeroU16::new(1)
        } else {
            None
        };
        let id = (0..model.n_vocab())
            .filter(|&t| vocab.token_to_piece(LlamaToken(t), false, lstrip) == *bytes)
            .min_by(|&a, &b| {
                (row[a as usize] - lp)
                    .abs()
                    .total_cmp(&(row[b as usize] - lp).abs())
            })
            .unwrap_or_else(|| panic!("token {k}: no vocabulary entry has the bytes {bytes:?}"));
        ids.push(id);
        rows.push(row);
        batch.clear();
        batch
            .add(LlamaToken(id), (prompt.len() + k) as i32, &[0], true)
            .expect("add");
        ctx.decode(&mut batch).expect("decode");
    }
    (ids, rows)
}
