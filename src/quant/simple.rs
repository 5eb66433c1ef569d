//! Plain float types and Q8_0.

use half::{bf16, f16};

pub fn row_f32(src: &[f32], dst: &mut [u8], _im: Option<&[f32]>) {
    for (d, v) in dst.chunks_exact_mut(4).zip(src) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

pub fn row_f16(src: &[f32], dst: &mut [u8], _im: Option<&[f32]>) {
    for (d, v) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
    }
}

/// ggml_compute_fp32_to_bf16: round to nearest even; NaN made quiet.
pub fn f32_to_bf16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

pub fn row_bf16(src: &[f32], dst: &mut [u8], _im: Option<&[f32]>) {
    for (d, v) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&f32_to_bf16_bits(*v).to_le_bytes());
    }
}

/// quantize_row_q8_0_ref.
pub fn row_q8_0(src: &[f32], dst: &mut [u8], _im: Option<&[f32]>) {
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(34)) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for (q, v) in b[2..].iter_mut().zip(x) {
            *q = (v * id).round() as i8 as u8;
        }
    }
}

pub fn deq_f32(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    }
}

pub fn deq_f16(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = f16::from_le_bytes([s[0], s[1]]).to_f32();
    }
}

pub fn deq_bf16(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = bf16::from_le_bytes([s[0], s[1]]).to_f32();
    }
}

pub fn deq_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        for (o, q) in y.iter_mut().zip(&b[2..]) {
            *o = (*q as i8) as f32 * d;
        }
    }
}

/// Search row quantizer for Q8_0: ggml's block plus weighted least-squares
/// refits of `d` (levels re-derived each time); keeps the lowest error.
pub fn row_q8_0_search(src: &[f32], dst: &mut [u8], im: Option<&[f32]>) {
    row_q8_0(src, dst, im);
    let w = super::search::row_weights(src, im);
    let mut y = [0f32; 32];
    let mut cand = [0u8; 34];
    for ((x, b), wb) in src
        .chunks_exact(32)
        .zip(dst.chunks_exact_mut(34))
        .zip(w.chunks_exact(32))
    {
        deq_q8_0(b, &mut y);
        let mut best = super::search::sq_err(x, wb, &y);
        for _ in 0..2 {
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for j in 0..32 {
                let q = b[2 + j] as i8 as f64;
                s1 += wb[j] as f64 * x[j] as f64 * q;
                s2 += wb[j] as f64 * q * q;
            }
            if s2.is_nan() || s2 <= 0.0 {
                break;
            }
            let d = f16::from_f32((s1 / s2) as f32);
            let dv = d.to_f32();
            if !dv.is_finite() || dv == 0.0 {
                break;
            }
            cand[..2].copy_from_slice(&d.to_le_bytes());
            for j in 0..32 {
                cand[2 + j] = (x[j] / dv).round().clamp(-128.0, 127.0) as i8 as u8;
            }
            deq_q8_0(&cand, &mut y);
            let e = super::search::sq_err(x, wb, &y);
            if e < best {
                best = e;
                b.copy_from_slice(&cand);
            } else {
                break;
            }
        }
    }
}
