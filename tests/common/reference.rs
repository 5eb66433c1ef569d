//! A plain-Rust Llama forward pass straight from HF safetensors (f32 math,
//! HF rotary layout), independent of the converter and of llama.cpp.

use airavata::safetensors::Checkpoint;
use serde_json::Value;
use std::path::Path;

struct W {
    ck: Checkpoint,
}

impl W {
    fn get(&self, name: &str) -> Vec<f32> {
        let (f, e) = self
            .ck
            .get(name)
            .unwrap_or_else(|| panic!("missing {name}"));
        f.read_f32(e).expect("read tensor")
    }
}

fn rmsnorm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ms: f64 = x.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / x.len() as f64;
    let s = 1.0 / (ms + eps as f64).sqrt();
    x.iter()
        .zip(w)
        .map(|(v, g)| ((*v as f64) * s) as f32 * g)
        .collect()
}

/// y = W x for W of shape [rows, cols] row-major.
fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
    let cols = x.len();
    w.chunks_exact(cols)
        .map(|r| {
            r.iter()
                .zip(x)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>() as f32
        })
        .collect()
}

fn rope_hf(v: &mut [f32], pos: usize, hd: usize, theta: f64) {
    let half = hd / 2;
    for head in v.chunks_exact_mut(hd) {
        for i in 0..half {
            let freq = theta.powf(-(2.0 * i as f64) / hd as f64);
            let (s, c) = (pos as f64 * freq).sin_cos();
            let a = head[i] as f64;
            let b = head[i + half] as f64;
            head[i] = (a * c - b * s) as f32;
            head[i + half] = (b * c + a * s) as f32;
        }
    }
}

/// Logits at every position of `tokens` for the checkpoint in `dir`.
pub fn forward(dir: &Path, tokens: &[i32]) -> Vec<Vec<f32>> {
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let g = |k: &str| cfg[k].as_u64().unwrap() as usize;
    let (hidden, n_layers, n_heads) = (
        g("hidden_size"),
        g("num_hidden_layers"),
        g("num_attention_heads"),
    );
    let n_kv = cfg["num_key_value_heads"]
        .as_u64()
        .map(|v| v as usize)
        .unwrap_or(n_heads);
    let hd = hidden / n_heads;
    let eps = cfg["rms_norm_eps"].as_f64().unwrap() as f32;
    let theta = cfg["rope_theta"].as_f64().unwrap_or(10000.0);
    let w = W {
        ck: Checkpoint::open(dir).expect("open checkpoint"),
    };
    let emb = w.get("model.embed_tokens.weight");
    let mut xs: Vec<Vec<f32>> = tokens
        .iter()
        .map(|&t| emb[t as usize * hidden..(t as usize + 1) * hidden].to_vec())
        .collect();
    for l in 0..n_layers {
        let p = format!("model.layers.{l}");
        let (wq, wk, wv, wo) = (
            w.get(&format!("{p}.self_attn.q_proj.weight")),
            w.get(&format!("{p}.self_attn.k_proj.weight")),
            w.get(&format!("{p}.self_attn.v_proj.weight")),
            w.get(&format!("{p}.self_attn.o_proj.weight")),
        );
        let (n1, n2) = (
            w.get(&format!("{p}.input_layernorm.weight")),
            w.get(&format!("{p}.post_attention_layernorm.weight")),
        );
        let (wg, wu, wd) = (
            w.get(&format!("{p}.mlp.gate_proj.weight")),
            w.get(&format!("{p}.mlp.up_proj.weight")),
            w.get(&format!("{p}.mlp.down_proj.weight")),
        );
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for (pos, x) in xs.iter().enumerate() {
            let h = rmsnorm(x, &n1, eps);
            let mut q = matvec(&wq, &h);
            let mut k = matvec(&wk, &h);
            rope_hf(&mut q, pos, hd, theta);
            rope_hf(&mut k, pos, hd, theta);
            qs.push(q);
            ks.push(k);
            vs.push(matvec(&wv, &h));
        }
        for pos in 0..xs.len() {
            let mut attn = vec![0f32; n_heads * hd];
            for h in 0..n_heads {
                let kvh = h / (n_heads / n_kv);
                let q = &qs[pos][h * hd..(h + 1) * hd];
                let scores: Vec<f64> = (0..=pos)
                    .map(|j| {
                        let k = &ks[j][kvh * hd..(kvh + 1) * hd];
                        q.iter()
                            .zip(k)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    let v: f64 = (0..=pos)
                        .map(|j| e[j] / z * vs[j][kvh * hd + d] as f64)
                        .sum();
                    attn[h * hd + d] = v as f32;
                }
            }
            let o = matvec(&wo, &attn);
            for (a, b) in xs[pos].iter_mut().zip(o) {
                *a += b;
            }
            let h2 = rmsnorm(&xs[pos], &n2, eps);
            let gt = matvec(&wg, &h2);
            let up = matvec(&wu, &h2);
            let act: Vec<f32> = gt
                .iter()
                .zip(&up)
                .map(|(g, u)| {
                    let g = *g as f64;
                    (g / (1.0 + (-g).exp()) * *u as f64) as f32
                })
                .collect();
            let d = matvec(&wd, &act);
            for (a, b) in xs[pos].iter_mut().zip(d) {
                *a += b;
            }
        }
    }
    let nf = w.get("model.norm.weight");
    let head = if w.ck.get("lm_head.weight").is_some() {
        w.get("lm_head.weight")
    } else {
        emb.clone()
    };
    xs.iter()
        .map(|x| matvec(&head, &rmsnorm(x, &nf, eps)))
        .collect()
}
