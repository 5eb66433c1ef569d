//! On stories260K, the search quantizer's KL-divergence against the F32 model
//! is lower than the reference quantizer's, at identical file size.

mod common;

use airavata::convert::Scheme;
use airavata::eval::{self, EvalOptions};
use airavata::quant::QuantMode;
use std::path::Path;

fn conv(src: &Path, out: &Path, scheme: Scheme, mode: QuantMode) -> u64 {
    common::convert(src, out, common::scheme(scheme), mode).bytes
}

#[test]
fn search_beats_reference_on_stories260k_kld() {
    let Some(a) = common::assets("search_beats_reference_on_stories260k_kld") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = a.join("stories260k-hf-derived");
    let base = tmp.path().join("f32.gguf");
    conv(&src, &base, Scheme::F32, QuantMode::Reference);
    // The TinyStories-style half of the PUD English text suits this model.
    let text = a.join("eval-pud-hi-en/en_pud.txt");
    let mut results = Vec::new();
    for (scheme, label) in [(Scheme::Nf4, "nf4"), (Scheme::Q4_0, "q4_0")] {
        let (r, s) = (
            tmp.path().join(format!("{label}-ref.gguf")),
            tmp.path().join(format!("{label}-search.gguf")),
        );
        let size_r = conv(&src, &r, scheme, QuantMode::Reference);
        let size_s = conv(&src, &s, scheme, QuantMode::Search);
        assert_eq!(size_r, size_s, "{label}: same types, same size");
        let kld = |m: &Path| {
            let mut o = EvalOptions::new(&base, m, &text);
            o.n_ctx = 256;
            o.n_chunks = Some(40);
            o.threads = Some(2);
            eval::evaluate(common::backend(), &o).unwrap().summary
        };
        let (kr, ks) = (kld(&r), kld(&s));
        eprintln!(
            "{label}: size {size_r} B; KLD reference {:.5} ± {:.5}, search {:.5} ± {:.5}; top-1 {:.2}% vs {:.2}%",
            kr.kld.value, kr.kld.uncertainty, ks.kld.value, ks.kld.uncertainty, kr.same_top.value * 100.0, ks.same_top.value * 100.0
        );
        results.push((label, kr.kld.value, ks.kld.value));
    }
    for (label, kr, ks) in results {
        assert!(ks < kr, "{label}: search KLD {ks} not below reference {kr}");
    }
}
