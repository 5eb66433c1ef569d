//! Which HF tensors become which GGUF tensors, with shapes and row permutation.

use super::config::LlamaConfig;

/// How rows are reordered on the way into GGUF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permute {
    None,
    /// Undo HF's rotary layout for Q/K (`n_heads` heads of `head_dim` rows):
    /// within each head, row `2i + j` of the output is row `j·head_dim/2 + i`.
    Rope {
        n_heads: usize,
    },
}

/// What kind of weight a tensor is (drives the type policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Embedding,
    Output,
    Norm,
    Weight,
}

/// One tensor to convert.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    pub hf_name: String,
    pub gguf_name: String,
    /// Shape in HF (row-major) order.
    pub shape: Vec<usize>,
    pub permute: Permute,
    pub role: Role,
}

impl PlannedTensor {
    /// ggml-order dims.
    pub fn gguf_dims(&self) -> Vec<u64> {
        self.shape.iter().rev().map(|&d| d as u64).collect()
    }
    pub fn row_len(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }
    pub fn n_rows(&self) -> usize {
        self.shape.iter().rev().skip(1).product()
    }
}

/// Tensors that HF checkpoints may carry but the GGUF does not need.
pub fn is_ignored(hf_name: &str) -> bool {
    hf_name.ends_with(".rotary_emb.inv_freq")
}

/// The complete list of tensors a Llama checkpoint with `cfg` must hold, in
/// llama.cpp's converter order. `has_lm_head` tells whether lm_head.weight exists.
pub fn plan(cfg: &LlamaConfig, has_lm_head: bool) -> Vec<PlannedTensor> {
    let h = cfg.hidden_size;
    let q = cfg.n_heads * cfg.head_dim;
    let kv = cfg.n_kv_heads * cfg.head_dim;
    let ff = cfg.intermediate_size;
    let t = |hf: String, g: String, shape: Vec<usize>, permute, role| PlannedTensor {
        hf_name: hf,
        gguf_name: g,
        shape,
        permute,
        role,
    };
    let mut v = vec![t(
        "model.embed_tokens.weight".into(),
        "token_embd.weight".into(),
        vec![cfg.vocab_size, h],
        Permute::None,
        Role::Embedding,
    )];
    for i in 0..cfg.n_layers {
        let p = format!("model.layers.{i}");
        let b = format!("blk.{i}");
        v.push(t(
            format!("{p}.input_layernorm.weight"),
            format!("{b}.attn_norm.weight"),
            vec![h],
            Permute::None,
            Role::Norm,
        ));
        v.push(t(
            format!("{p}.self_attn.q_proj.weight"),
            format!("{b}.attn_q.weight"),
            vec![q, h],
            Permute::Rope {
                n_heads: cfg.n_heads,
            },
            Role::Weight,
        ));
        v.push(t(
            format!("{p}.self_attn.k_proj.weight"),
            format!("{b}.attn_k.weight"),
            vec![kv, h],
            Permute::Rope {
                n_heads: cfg.n_kv_heads,
            },
            Role::Weight,
        ));
        v.push(t(
            format!("{p}.self_attn.v_proj.weight"),
            format!("{b}.attn_v.weight"),
            vec![kv, h],
            Permute::None,
            Role::Weight,
        ));
        v.push(t(
            format!("{p}.self_attn.o_proj.weight"),
            format!("{b}.attn_output.weight"),
            vec![h, q],
            Permute::None,
            Role::Weight,
        ));
        v.push(t(
            format!("{p}.post_attention_layernorm.weight"),
            format!("{b}.ffn_norm.weight"),
            vec![h],
            Permute::None,
            Role::Norm,
        ));
        v.push(t(
            format!("{p}.mlp.gate_proj.weight"),
            format!("{b}.ffn_gate.weight"),
            vec![ff, h],
            Permute::None,
            Role::Weight,
        ));
        v.push(t(
            format!("{p}.mlp.down_proj.weight"),
            format!("{b}.ffn_down.weight"),
            vec![h, ff],
            Permute::None,
            Role::Weight,
        ));
        v.push(t(
            format!("{p}.mlp.up_proj.weight"),
            format!("{b}.ffn_up.weight"),
            vec![ff, h],
            Permute::None,
            Role::Weight,
        ));
    }
    v.push(t(
        "model.norm.weight".into(),
        "output_norm.weight".into(),
        vec![h],
        Permute::None,
        Role::Norm,
    ));
    if has_lm_head || !cfg.tie_word_embeddings {
        v.push(t(
            "lm_head.weight".into(),
            "output.weight".into(),
            vec![cfg.vocab_size, h],
            Permute::None,
            Role::Output,
        ));
    }
    v
}

/// Apply `permute` to `rows` consecutive rows of length `row_len` in place.
/// `first_row` must be a multiple of the head size (chunks hold whole heads).
pub fn apply_permute(p: Permute, data: &mut [f32], row_len: usize, total_rows: usize) {
    use rayon::prelude::*;
    let Permute::Rope { n_heads } = p else {
        return;
    };
    let head_rows = total_rows / n_heads;
    let half = head_rows / 2;
    let head_len = head_rows * row_len;
    if head_len == 0 {
        return;
    }
    // Heads are independent: permute them in parallel, one buffer per job.
    data.par_chunks_exact_mut(head_len).for_each_init(
        || vec![0f32; head_len],
        |tmp, block| {
            for i in 0..half {
                for j in 0..2 {
                    let src = j * half + i;
                    let dst = 2 * i + j;
                    tmp[dst * row_len..(dst + 1) * row_len]
                        .copy_from_slice(&block[src * row_len..(src + 1) * row_len]);
                }
            }
            block.copy_from_slice(tmp);
        },
    );
}
