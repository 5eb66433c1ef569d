//! Calibration-aware rounding on small layers with a known `XᵀX`: the output
//! error ‖(W − Q)X‖² is below per-block search with the same importance, and
//! the bytes are plain ggml blocks that ggml's own `to_float` decodes.

mod quant_common;

use airavata::gguf::GgmlType;
use airavata::quant::gptq::{output_error, Feedback, Hessian, DAMP};
use airavata::quant::{self, QuantMode};
use quant_common::{ggml_dequantize, Rng};

/// Correlated inputs (as activations are): a few shared factors plus noise,
/// with some columns much larger than others.
fn inputs(rng: &mut Rng, tokens: usize, n: usize) -> Vec<f32> {
    let k = 8;
    let load: Vec<f64> = (0..k * n).map(|_| rng.normal()).collect();
    let scale: Vec<f64> = (0..n)
        .map(|j| if j % 37 == 0 { 8.0 } else { 1.0 })
        .collect();
    let mut x = vec![0f32; tokens * n];
    for t in 0..tokens {
        let f: Vec<f64> = (0..k).map(|_| rng.normal()).collect();
        for j in 0..n {
            let mut v = 0.3 * rng.normal();
            for (i, fi) in f.iter().enumerate() {
                v += fi * load[i * n + j];
            }
            x[t * n + j] = (v * scale[j]) as f32;
        }
    }
    x
}

fn hessian(x: &[f32], n: usize, max_block: usize, align: usize) -> Hessian {
    let mut h = Hessian::new(n, max_block, align);
    h.add_rows(x, x.len() / n);
    h
}

fn check(ty: GgmlType, n: usize, max_block: usize) {
    let mut rng = Rng::new(0x5eed ^ n as u64);
    let rows = 24;
    let w: Vec<f32> = (0..rows * n)
        .map(|_| (rng.normal() * 0.05) as f32)
        .collect();
    let x = inputs(&mut rng, 4 * n, n);
    let align = if n.is_multiple_of(256) { 256 } else { 32 };
    let h = hessian(&x, n, max_block, align);
    let fb = Feedback::new(&h, DAMP).expect("positive definite");
    let imp = h.importance();

    let gptq = quant::gptq::quantize_rows(ty, &w, n, &fb, QuantMode::Search).unwrap();
    let plain = quant::quantize(ty, &w, n, Some(&imp), QuantMode::Search).unwrap();
    assert_eq!(gptq.len(), plain.len(), "same size, same format");

    // ggml decodes our bytes; our decoder agrees bit for bit.
    let q_gptq = ggml_dequantize(ty, &gptq, w.len());
    let ours = quant::dequantize(ty, &gptq, w.len()).unwrap();
    assert!(
        q_gptq
            .iter()
            .zip(&ours)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{ty}: ggml's to_float and ours disagree"
    );
    let q_plain = ggml_dequantize(ty, &plain, w.len());

    let e_gptq = output_error(&h, &w, &q_gptq);
    let e_plain = output_error(&h, &w, &q_plain);
    let ratio = e_gptq / e_plain;
    println!("{ty} n={n} block={max_block}: ‖(W−Q)X‖² feedback/plain = {ratio:.3}");
    assert!(
        ratio < 0.9,
        "{ty}: feedback {e_gptq:.4e} vs per-block {e_plain:.4e}"
    );

    // The same with one exact check of the metric: ‖(W−Q)X‖² computed directly.
    let tokens = x.len() / n;
    let direct: f64 = (0..rows)
        .map(|r| {
            (0..tokens)
                .map(|t| {
                    let s: f64 = (0..n)
                        .map(|j| (w[r * n + j] - q_gptq[r * n + j]) as f64 * x[t * n + j] as f64)
                        .sum();
                    s * s
                })
                .sum::<f64>()
        })
        .sum();
    if h.blocks.len() == 1 {
        assert!(
            (direct - e_gptq).abs() <= 1e-3 * direct,
            "metric: {direct} vs {e_gptq}"
        );
    }
}

#[test]
fn iq4_nl_feedback_beats_per_block_search() {
    check(GgmlType::Iq4Nl, 576, 1024);
}

#[test]
fn iq4_xs_feedback_beats_per_block_search() {
    check(GgmlType::Iq4Xs, 512, 1024);
}

#[test]
fn iq4_xs_feedback_with_several_hessian_blocks() {
    check(GgmlType::Iq4Xs, 1024, 512);
}

#[test]
fn q4_k_and_q6_k_feedback_beat_per_block_search() {
    check(GgmlType::Q4K, 512, 1024);
    check(GgmlType::Q6K, 1024, 1024);
}

#[test]
fn q4_0_feedback_beats_per_block_search() {
    check(GgmlType::Q4_0, 320, 1024);
}
