//! `--fuse-qkv`: one `blk.N.attn_qkv.weight` (the Q, K and V rows one after
//! another) in place of each layer's three attention input matrices, so a
//! decode step runs one matmul (and one quantization of its input) where it
//! ran three. llama.cpp loads the fused tensor for the llama architecture
//! (`create_tensor_qkv`) and splits its output with views, so the numbers are
//! the same rows as before. Only layers whose three matrices get the same type
//! (and no transform) are fused; the others stay as they were and are named.

use super::pipeline::{Job, TensorInput, Transform};
use super::ConvertError;
use crate::gguf::GgmlType;
use std::path::Path;

/// The fused name of a layer's Q/K/V and the three names it replaces.
fn names(layer: usize) -> [String; 4] {
    let b = format!("blk.{layer}");
    [
        format!("{b}.attn_qkv.weight"),
        format!("{b}.attn_q.weight"),
        format!("{b}.attn_k.weight"),
        format!("{b}.attn_v.weight"),
    ]
}

/// Rows of several inputs, one after another.
struct ConcatRows<'a> {
    name: String,
    /// Each part with its first row in the fused tensor and its row count.
    parts: Vec<(Box<dyn TensorInput + 'a>, usize, usize)>,
    unit: usize,
}

impl TensorInput for ConcatRows<'_> {
    fn origin(&self) -> (&Path, &str) {
        let path = self.parts.first().map_or(Path::new(""), |p| p.0.origin().0);
        (path, &self.name)
    }

    fn read(&self, row0: usize, nrows: usize) -> Result<Vec<f32>, ConvertError> {
        let end = row0 + nrows;
        let mut out = Vec::new();
        for (input, first, rows) in &self.parts {
            let (a, b) = (row0.max(*first), end.min(first + rows));
            if a < b {
                out.extend(input.read(a - first, b - a)?);
            }
        }
        Ok(out)
    }

    fn row_unit(&self) -> usize {
        self.unit
    }

    fn raw_parts(&self, ty: GgmlType) -> Option<Vec<&[u8]>> {
        let mut v = Vec::with_capacity(self.parts.len());
        for (input, _, _) in &self.parts {
            v.extend(input.raw_parts(ty)?);
        }
        Some(v)
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// What fusing did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fused {
    pub layers: usize,
    /// Layers left unfused, with why.
    pub kept: Vec<(usize, String)>,
}

/// Why a layer's Q, K and V jobs cannot be fused, or None when they can.
fn mismatch(q: &Job, k: &Job, v: &Job) -> Option<String> {
    if q.ty != k.ty || q.ty != v.ty {
        Some(format!(
            "types differ (attn_q {}, attn_k {}, attn_v {})",
            q.ty, k.ty, v.ty
        ))
    } else if [q, k, v].iter().any(|j| j.transform != Transform::None) {
        Some("the scheme transforms the weights".into())
    } else if [q, k, v]
        .iter()
        .any(|j| j.dims.len() != 2 || j.row_len() != q.row_len())
    {
        Some("shapes do not line up".into())
    } else {
        None
    }
}

/// Replace each layer's Q, K and V jobs by one fused job where they agree in
/// type, transform and row length (the fused job takes Q's place).
pub fn qkv(jobs: Vec<Job<'_>>) -> (Vec<Job<'_>>, Fused) {
    let mut report = Fused::default();
    let mut slots: Vec<Option<Job>> = jobs.into_iter().map(Some).collect();
    let find = |slots: &[Option<Job>], name: &str| {
        slots
            .iter()
            .position(|j| j.as_ref().is_some_and(|j| j.name == name))
    };
    for layer in 0.. {
        let [fused, q, k, v] = names(layer);
        let (Some(qi), Some(ki), Some(vi)) = (find(&slots, &q), find(&slots, &k), find(&slots, &v))
        else {
            break;
        };
        let (Some(jq), Some(jk), Some(jv)) = (slots[qi].take(), slots[ki].take(), slots[vi].take())
        else {
            break;
        };
        if let Some(why) = mismatch(&jq, &jk, &jv) {
            (slots[qi], slots[ki], slots[vi]) = (Some(jq), Some(jk), Some(jv));
            report.kept.push((layer, why));
            continue;
        }
        let row_len = jq.row_len();
        let mut parts = Vec::new();
        let mut unit = 1;
        let mut first = 0;
        let ty = jq.ty;
        for j in [jq, jk, jv] {
            let rows = j.n_rows();
            let u = j.input.row_unit().max(1);
            unit = unit / gcd(unit, u) * u;
            parts.push((j.input, first, rows));
            first += rows;
        }
        // A chunk boundary must fall on whole units of every part: each part
        // starts at a multiple of its own unit (Q's and K's are whole heads).
        if parts.iter().any(|(p, f, _)| f % p.row_unit().max(1) != 0) {
            unit = first.max(1);
        }
        slots[qi] = Some(Job {
            name: fused.clone(),
            dims: vec![row_len as u64, first as u64],
            ty,
            transform: Transform::None,
            input: Box::new(ConcatRows {
                name: fused,
                parts,
                unit,
            }),
        });
        report.layers += 1;
    }
    (slots.into_iter().flatten().collect(), report)
}

/// `qkv` when `on`, saying what was kept when `tell`.
pub fn apply(jobs: Vec<Job<'_>>, on: bool, tell: bool) -> Vec<Job<'_>> {
    if !on {
        return jobs;
    }
    let (jobs, report) = qkv(jobs);
    if tell {
        if let Some(n) = report.notice() {
            eprintln!("{n}");
        }
    }
    jobs
}

impl Fused {
    /// One line for the user, or None when nothing needs saying.
    pub fn notice(&self) -> Option<String> {
        if self.kept.is_empty() {
            return (self.layers == 0).then(|| {
                "--fuse-qkv: no layer has attn_q/attn_k/attn_v weights to fuse".to_string()
            });
        }
        let (l, why) = &self.kept[0];
        Some(format!(
            "--fuse-qkv: fused {} layers, kept {} as separate Q/K/V (layer {l}: {why})",
            self.layers,
            self.kept.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rows {
        first: f32,
        n: usize,
        row_len: usize,
        unit: usize,
    }

    impl TensorInput for Rows {
        fn origin(&self) -> (&Path, &str) {
            (Path::new("t"), "rows")
        }
        fn read(&self, row0: usize, nrows: usize) -> Result<Vec<f32>, ConvertError> {
            assert!(
                row0.is_multiple_of(self.unit)
                    && (nrows.is_multiple_of(self.unit) || row0 + nrows == self.n)
            );
            assert!(row0 + nrows <= self.n);
            Ok((row0..row0 + nrows)
                .flat_map(|r| std::iter::repeat_n(self.first + r as f32, self.row_len))
                .collect())
        }
        fn row_unit(&self) -> usize {
            self.unit
        }
    }

    fn job(name: &str, rows: usize, ty: GgmlType, first: f32, unit: usize) -> Job<'static> {
        Job {
            name: name.into(),
            dims: vec![4, rows as u64],
            ty,
            transform: Transform::None,
            input: Box::new(Rows {
                first,
                n: rows,
                row_len: 4,
                unit,
            }),
        }
    }

    #[test]
    fn fuses_rows_in_q_k_v_order_and_keeps_mismatched_layers() {
        let jobs = vec![
            job("token_embd.weight", 3, GgmlType::F16, 0.0, 1),
            job("blk.0.attn_q.weight", 8, GgmlType::Q8_0, 100.0, 4),
            job("blk.0.attn_k.weight", 4, GgmlType::Q8_0, 200.0, 2),
            job("blk.0.attn_v.weight", 4, GgmlType::Q8_0, 300.0, 1),
            job("blk.1.attn_q.weight", 8, GgmlType::Q8_0, 0.0, 1),
            job("blk.1.attn_k.weight", 4, GgmlType::Q8_0, 0.0, 1),
            job("blk.1.attn_v.weight", 4, GgmlType::Q6K, 0.0, 1),
        ];
        let (out, rep) = qkv(jobs);
        let names: Vec<&str> = out.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "token_embd.weight",
                "blk.0.attn_qkv.weight",
                "blk.1.attn_q.weight",
                "blk.1.attn_k.weight",
                "blk.1.attn_v.weight"
            ]
        );
        assert_eq!(rep.layers, 1);
        assert_eq!(rep.kept.len(), 1);
        assert_eq!(
            rep.kept[0],
            (
                1,
                "types differ (attn_q Q8_0, attn_k Q8_0, attn_v Q6_K)".to_string()
            )
        );
        let f = &out[1];
        assert_eq!(f.dims, vec![4, 16]);
        assert_eq!(f.input.row_unit(), 4);
        // Rows 4..16 straddle Q (4..8), K (0..4) and V (0..4), each read in whole units.
        let rows: Vec<f32> = f
            .input
            .read(4, 12)
            .unwrap()
            .chunks(4)
            .map(|r| r[0])
            .collect();
        let want: Vec<f32> = (104..108)
            .chain(200..204)
            .chain(300..304)
            .map(|x| x as f32)
            .collect();
        assert_eq!(rows, want);
        assert_eq!(f.input.origin().1, "blk.0.attn_qkv.weight");
        assert!(rep.notice().unwrap().contains("fused 1 layers, kept 1"));
    }

    #[test]
    fn a_fused_weight_takes_the_q_weights_statistics() {
        assert_eq!(
            crate::calib::qkv_source("blk.12.attn_qkv.weight").as_deref(),
            Some("blk.12.attn_q.weight")
        );
        assert_eq!(crate::calib::qkv_source("blk.x.attn_qkv.weight"), None);
        assert_eq!(crate::calib::qkv_source("blk.1.attn_q.weight"), None);
    }
}
