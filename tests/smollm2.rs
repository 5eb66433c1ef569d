//! `airavata quantize` and calibration on a real trained model,
//! SmolLM2-135M-Instruct (Llama architecture, GQA 9/3, tied embeddings,
//! 576-wide rows), against llama.cpp's own quantizer as the oracle.

mod common;

use airavata::calib::{self, CollectOptions, HessianBlocks};
use airavata::convert::{self, Calibrate, QuantizeOptions, TypePolicy};
use airavata::gguf::{GgmlType, GgufFile};
use airavata::quant::Imatrix;
use llama_cpp_sys_2 as sys;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

fn quantize(
    input: &Path,
    output: &Path,
    policy: TypePolicy,
    calibrate: Calibrate,
) -> convert::ConvertReport {
    let opts = QuantizeOptions {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        policy,
        quantizer: None,
        calibrate,
        allow_requantize: false,
        overwrite: true,
        progress: false,
    };
    convert::quantize_gguf(&opts, &convert::Silent, &AtomicBool::new(false))
        .unwrap_or_else(|e| panic!("quantize {}: {e}", input.display()))
}

/// `llama_model_quantize` (what llama-quantize runs) to IQ4_XS.
fn llama_quantize(src: &Path, dst: &Path, pure: bool) {
    common::backend();
    let (i, o) = (
        CString::new(src.to_str().unwrap()).unwrap(),
        CString::new(dst.to_str().unwrap()).unwrap(),
    );
    // SAFETY: FFI into llama.cpp with valid NUL-terminated paths and a
    // params struct from llama.cpp's own default constructor.
    let rc = unsafe {
        let mut p = sys::llama_model_quantize_default_params();
        p.nthread = 2;
        p.ftype = sys::LLAMA_FTYPE_MOSTLY_IQ4_XS;
        p.pure_ = pure;
        sys::llama_model_quantize(i.as_ptr(), o.as_ptr(), &p)
    };
    assert_eq!(rc, 0, "llama_model_quantize failed");
}

fn assert_same_tensors(ours: &Path, theirs: &Path) {
    let (o, t) = (
        GgufFile::open(ours).unwrap(),
        GgufFile::open(theirs).unwrap(),
    );
    assert_eq!(o.tensors.len(), t.tensors.len());
    for tt in &t.tensors {
        let ot = o
            .tensor(&tt.name)
            .unwrap_or_else(|| panic!("missing {}", tt.name));
        assert_eq!((ot.ty, &ot.dims), (tt.ty, &tt.dims), "{}", tt.name);
        assert!(
            o.tensor_data(ot) == t.tensor_data(tt),
            "{} ({}) differs from llama-quantize",
            tt.name,
            tt.ty
        );
    }
}

#[test]
fn f16_base_is_the_q4_1_model_dequantized_by_ggml() {
    let Some((q4, f16)) = common::smollm2("f16_base") else {
        return;
    };
    let (a, b) = (GgufFile::open(&q4).unwrap(), GgufFile::open(&f16).unwrap());
    assert_eq!(b.get_u64("general.file_type"), Some(1));
    assert_eq!(a.tensors.len(), b.tensors.len());
    for key in [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.chat_template",
        "llama.block_count",
    ] {
        assert_eq!(a.get(key), b.get(key), "{key} copied");
    }
    let mut checked = 0;
    for t in &a.tensors {
        let u = b.tensor(&t.name).unwrap();
        if t.ty == GgmlType::F32 {
            assert_eq!(u.ty, GgmlType::F32, "{} kept", t.name);
            assert!(a.tensor_data(t) == b.tensor_data(u));
            continue;
        }
        assert_eq!(u.ty, GgmlType::F16, "{} ({}) becomes F16", t.name, t.ty);
        if t.ty == GgmlType::Q4_1 && checked < 6 {
            let n = t.n_elements() as usize;
            // SAFETY: Q4_1 is a ggml type with a to_float converter.
            let to_float =
                unsafe { (*sys::ggml_get_type_traits(GgmlType::Q4_1.code())).to_float }.unwrap();
            let mut want = vec![0f32; n];
            // SAFETY: the tensor's bytes hold exactly `n` Q4_1 values.
            unsafe {
                to_float(
                    a.tensor_data(t).as_ptr() as *const _,
                    want.as_mut_ptr(),
                    n as i64,
                )
            };
            let got: Vec<f32> = b
                .tensor_data(u)
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(*g, half::f16::from_f32(*w).to_f32(), "{}[{i}]", t.name);
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
}

#[test]
fn uncalibrated_nf4_is_byte_identical_to_llama_quantize_iq4_xs() {
    let Some((_, f16)) = common::smollm2("llama_quantize_identity") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // Default mix: tied embeddings as output (Q8_0 at 576 wide), ffn_down
    // of the first 30/8 layers Q5_K, IQ4_NL where rows are not 256-wide.
    let (ours, theirs) = (tmp.path().join("ours.gguf"), tmp.path().join("theirs.gguf"));
    let r = quantize(&f16, &ours, TypePolicy::default(), Calibrate::Off);
    llama_quantize(&f16, &theirs, false);
    assert_same_tensors(&ours, &theirs);
    assert_eq!(r.types.get("Q5_K"), Some(&3));
    assert_eq!(r.types.get("Q8_0"), Some(&1));
    let f = GgufFile::open(&ours).unwrap();
    assert_eq!(f.tensor("token_embd.weight").unwrap().ty, GgmlType::Q8_0);
    assert_eq!(f.get_u64("general.file_type"), Some(30));
    // --pure --quantizer reference.
    let pure = TypePolicy {
        pure: true,
        ..Default::default()
    };
    let opts = QuantizeOptions {
        input: f16.clone(),
        output: ours.clone(),
        policy: pure,
        quantizer: Some(airavata::quant::QuantMode::Reference),
        calibrate: Calibrate::Off,
        allow_requantize: false,
        overwrite: true,
        progress: false,
    };
    convert::quantize_gguf(&opts, &convert::Silent, &AtomicBool::new(false)).unwrap();
    llama_quantize(&f16, &theirs, true);
    assert_same_tensors(&ours, &theirs);
    // And the llama-quantize program itself, when it is built.
    if let Some(tool) = common::llama_tool("llama-quantize") {
        let cli = tmp.path().join("cli.gguf");
        let st = std::process::Command::new(tool)
            .args(["--pure"])
            .arg(&f16)
            .arg(&cli)
            .arg("IQ4_XS")
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        assert_same_tensors(&ours, &cli);
    }
}

fn eval_text(n_bytes: usize) -> Option<(String, String)> {
    let assets = common::assets("smollm2 calibration")?;
    let t = std::fs::read_to_string(assets.join("eval-wikitext2/wiki.test.raw")).unwrap();
    // Disjoint halves: calibrate on the first, evaluate on the second.
    let mid = t.len() / 2;
    let mid = (mid..t.len()).find(|&i| t.is_char_boundary(i)).unwrap();
    let (a, b) = t.split_at(mid);
    Some((
        a[..n_bytes.min(a.len())].to_string(),
        b[..n_bytes.min(b.len())].to_string(),
    ))
}

/// Under a CPU time budget `collect` first measures the pace with a short
/// probe that records nothing: with room to spare the statistics are those of
/// a run without a budget, bit for bit; when the minimum cannot fit, it stops
/// after the probe, before any chunk, and says what the minimum would take.
#[test]
fn pace_probe_records_nothing_and_stops_a_hopeless_budget_early() {
    let Some((_, f16)) = common::smollm2("pace_probe") else {
        return;
    };
    let Some((calib_text, _)) = eval_text(20_000) else {
        return;
    };
    let base = CollectOptions {
        chunk: 128,
        max_tokens: 256,
        hessian: HessianBlocks::OFF,
        threads: Some(2),
        ..Default::default()
    };
    let plain = calib::collect(&f16, &calib_text, &base).unwrap();
    let budgeted = calib::collect(
        &f16,
        &calib_text,
        &CollectOptions {
            time_budget: Some(std::time::Duration::from_secs(3600)),
            min_tokens: 256,
            ..base.clone()
        },
    )
    .unwrap();
    assert_eq!(budgeted.tokens, 256);
    assert_eq!(budgeted.chunks, 2);
    assert_eq!(budgeted.weight_input, plain.weight_input);
    assert_eq!(budgeted.inputs.len(), plain.inputs.len());
    for (a, b) in budgeted.inputs.iter().zip(&plain.inputs) {
        assert_eq!(a.count, b.count);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.sum_sq), bits(&b.sum_sq));
    }
    let err = calib::collect(
        &f16,
        &calib_text,
        &CollectOptions {
            time_budget: Some(std::time::Duration::from_nanos(1)),
            min_tokens: 256,
            ..base
        },
    )
    .expect_err("a 1 ns budget cannot fit 256 tokens");
    match &err {
        calib::CalibError::Budget {
            tokens, min_tokens, ..
        } => {
            assert_eq!((*tokens, *min_tokens), (64, 256), "{err}");
        }
        other => panic!("expected a budget error, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.starts_with("calibration too slow here: 64 tokens in ")
            && msg.contains("256 tokens would take about"),
        "{msg}"
    );
}

#[test]
fn our_imatrix_file_round_trips_and_llama_quantize_accepts_it() {
    let Some((_, f16)) = common::smollm2("imatrix_file") else {
        return;
    };
    let Some((calib_text, _)) = eval_text(40_000) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let opts = CollectOptions {
        chunk: 128,
        max_tokens: 256,
        hessian: HessianBlocks::OFF,
        threads: Some(2),
        ..Default::default()
    };
    let stats = calib::collect(&f16, &calib_text, &opts).unwrap();
    assert_eq!(stats.tokens, 256);
    // 30 layers × 7 weights, plus the output matrix (token_embd, tied);
    // Q/K/V share one input, gate/up another.
    assert_eq!(stats.weight_input.len(), 211);
    assert_eq!(stats.inputs.len(), 121);
    assert!(stats.weight_input.contains_key("token_embd.weight"));
    assert_eq!(
        stats.weight_input["blk.3.attn_q.weight"],
        stats.weight_input["blk.3.attn_v.weight"]
    );
    assert_ne!(
        stats.weight_input["blk.3.attn_q.weight"],
        stats.weight_input["blk.3.attn_output.weight"]
    );
    let path = tmp.path().join("imatrix.gguf");
    calib::write_imatrix(&path, &stats, "wiki-first-half").unwrap();
    let back = Imatrix::load(&path).unwrap();
    assert_eq!(back.len(), 211);
    assert_eq!(back.datasets, vec!["wiki-first-half".to_string()]);
    for (name, v) in stats.importance() {
        let got = back.get(&name).unwrap();
        assert_eq!(
            got.len(),
            if name.contains("ffn_down") { 1536 } else { 576 }
        );
        for (a, b) in got.iter().zip(&v) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1e-6),
                "{name}: {a} vs {b}"
            );
        }
        assert!(v.iter().all(|x| *x >= 0.0) && v.iter().any(|x| *x > 0.0));
    }
    match common::llama_tool("llama-quantize") {
        Some(tool) => {
            let out = tmp.path().join("with-imatrix.gguf");
            let st = std::process::Command::new(tool)
                .arg("--imatrix")
                .arg(&path)
                .arg(&f16)
                .arg(&out)
                .arg("IQ4_XS")
                .output()
                .unwrap();
            let log = String::from_utf8_lossy(&st.stderr);
            assert!(st.status.success(), "{log}");
            let q = GgufFile::open(&out).unwrap();
            // Every entry of ours, the output matrix's included.
            assert_eq!(
                q.get_u64("quantize.imatrix.entries_count"),
                Some(211),
                "{log}"
            );
            // With an imatrix llama-quantize keeps every ffn_down at IQ4_XS.
            assert_eq!(
                q.tensor("blk.0.ffn_down.weight").unwrap().ty,
                GgmlType::Iq4Xs
            );
        }
        None if common::in_ci() => {
            panic!("llama-quantize not built (scripts/build-llama-tools.sh runs in .ci/run)")
        }
        None => eprintln!("skipped llama-quantize --imatrix: run scripts/build-llama-tools.sh"),
    }
}

#[test]
fn calibrated_quantize_records_its_calibration_and_lowers_kld() {
    let Some((_, f16)) = common::smollm2("calibrated") else {
        return;
    };
    let Some((calib_text, eval)) = eval_text(60_000) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("calib.txt");
    std::fs::write(&text, &calib_text).unwrap();
    let eval_path = tmp.path().join("eval.txt");
    std::fs::write(&eval_path, &eval).unwrap();
    let plain = tmp.path().join("plain.gguf");
    let cal = tmp.path().join("cal.gguf");
    quantize(&f16, &plain, TypePolicy::default(), Calibrate::Off);
    let how = Calibrate::Collect {
        text: Some(text.clone()),
        opts: CollectOptions {
            chunk: 256,
            max_tokens: 1024,
            threads: Some(2),
            ..Default::default()
        },
        auto: false,
    };
    let r = quantize(&f16, &cal, TypePolicy::default(), how);
    assert!(
        r.calibration
            .as_deref()
            .unwrap_or("")
            .contains("1024 tokens"),
        "{:?}",
        r.calibration
    );
    let f = GgufFile::open(&cal).unwrap();
    assert_eq!(f.get_str("airavata.calibration.method"), Some("collected"));
    assert_eq!(f.get_u64("airavata.calibration.tokens"), Some(1024));
    // Every input is at most 2048 wide, so each keeps its whole XᵀX: the
    // largest block is ffn_down's 1536-wide input (two 768 blocks before).
    assert_eq!(f.get_u64("airavata.calibration.hessian_block"), Some(1536));
    assert_eq!(f.get_u64("quantize.imatrix.entries_count"), Some(211));
    assert_eq!(
        f.get_str("quantize.imatrix.dataset"),
        Some(text.to_str().unwrap())
    );
    // Collected statistics keep llama-quantize's default mix (early ffn_down
    // Q5_K) and give the GQA model's attn_v 5 bits (Q5_0 on 576-wide rows).
    assert_eq!(f.tensor("blk.0.ffn_down.weight").unwrap().ty, GgmlType::Q5K);
    assert_eq!(
        f.tensor("blk.3.ffn_down.weight").unwrap().ty,
        GgmlType::Iq4Xs
    );
    assert_eq!(f.tensor("blk.7.attn_v.weight").unwrap().ty, GgmlType::Q5_0);
    let p = GgufFile::open(&plain).unwrap();
    assert_eq!(p.tensor("blk.7.attn_v.weight").unwrap().ty, GgmlType::Iq4Nl);
    let size_ratio = std::fs::metadata(&cal).unwrap().len() as f64
        / std::fs::metadata(&plain).unwrap().len() as f64;
    // 30 attn_v of 192 × 576 at 5.5 instead of 4.5 bits: +0.45 %, plus the
    // calibration metadata.
    assert!(
        (1.004..=1.006).contains(&size_ratio),
        "attn_v bump costs about 0.45 %: {size_ratio}"
    );

    // Fidelity on the held-out half (scored as llama-perplexity --kl-divergence).
    let kld = |m: &PathBuf| {
        let mut o = airavata::eval::EvalOptions::new(f16.clone(), m.clone(), eval_path.clone());
        o.n_ctx = 256;
        o.n_chunks = Some(4);
        o.threads = Some(2);
        airavata::eval::evaluate(common::backend(), &o)
            .unwrap()
            .summary
            .kld
            .value
    };
    let (k_plain, k_cal) = (kld(&plain), kld(&cal));
    println!("mean KLD on held-out text: uncalibrated {k_plain:.4}, calibrated {k_cal:.4}");
    assert!(
        k_cal < 0.9 * k_plain,
        "calibrated {k_cal} vs uncalibrated {k_plain}"
    );
}

/// `--fuse-qkv` on a real model through `quantize` (issue 23): Q8_0 weights,
/// every layer's attn_q/attn_k/attn_v replaced by one attn_qkv holding their
/// bytes one after another; llama.cpp loads it and gives the same logits and
/// greedy answer as the separate file.
#[test]
fn fused_qkv_file_gives_llama_cpp_the_same_logits() {
    let Some((_, f16)) = common::smollm2("fused_qkv") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (sep, fused) = (tmp.path().join("sep.gguf"), tmp.path().join("fused.gguf"));
    let q8 = |fuse_qkv| TypePolicy {
        scheme: convert::Scheme::Q8_0,
        fuse_qkv,
        ..Default::default()
    };
    quantize(&f16, &sep, q8(false), Calibrate::Off);
    let r = quantize(&f16, &fused, q8(true), Calibrate::Off);
    assert_eq!(r.n_tensors, common::assert_fused_qkv(&sep, &fused));
    let b = GgufFile::open(&fused).unwrap();
    for l in 0..b.get_u64("llama.block_count").unwrap() as usize {
        let t = b.tensor(&format!("blk.{l}.attn_qkv.weight")).unwrap();
        // 9 query heads and 3 KV heads of 64.
        assert_eq!(t.dims, vec![576, 576 + 192 + 192]);
        assert_eq!(t.ty, GgmlType::Q8_0);
    }
    let (ma, mb) = (common::load_model(&sep), common::load_model(&fused));
    let toks = ma.vocab().tokenize(
        "भारत की राजधानी नई दिल्ली है। The capital of India is".as_bytes(),
        true,
        false,
    );
    let err = common::max_rel_err(
        &common::llama_logits(&ma, &toks),
        &common::llama_logits(&mb, &toks),
    );
    assert!(
        err <= 1e-5,
        "fused vs separate: max relative logit error {err:.3e}"
    );
    assert_eq!(
        common::greedy(&ma, &toks, 24),
        common::greedy(&mb, &toks, 24)
    );
}

/// A calibrated `--fuse-qkv` file (issue 23): the fused weight is rounded with
/// its layer's Q statistics (error feedback included), so its bytes equal the
/// calibrated separate file's Q, K and V one after another.
#[test]
fn calibrated_fused_qkv_rounds_as_the_separate_tensors() {
    let Some((_, f16)) = common::smollm2("fused_qkv_calibrated") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (sep, fused) = (tmp.path().join("sep.gguf"), tmp.path().join("fused.gguf"));
    let policy = |fuse_qkv| TypePolicy {
        scheme: convert::Scheme::Q4_0,
        fuse_qkv,
        ..Default::default()
    };
    let cal = || Calibrate::Collect {
        text: None,
        opts: CollectOptions {
            chunk: 128,
            max_tokens: 256,
            threads: Some(2),
            ..Default::default()
        },
        auto: false,
    };
    let rs = quantize(&f16, &sep, policy(false), cal());
    let rf = quantize(&f16, &fused, policy(true), cal());
    assert!(rs.calibration.is_some() && rf.calibration == rs.calibration);
    let (a, b) = (
        GgufFile::open(&sep).unwrap(),
        GgufFile::open(&fused).unwrap(),
    );
    assert_eq!(
        a.get_str("airavata.calibration.method"),
        b.get_str("airavata.calibration.method")
    );
    assert_eq!(rf.n_tensors, common::assert_fused_qkv(&sep, &fused));
}

/// `collect_cancellable` with its flag already set stops before any forward
/// pass and says so.
#[test]
fn collection_stops_when_cancelled() {
    let Some((_, f16)) = common::smollm2("collection_cancelled") else {
        return;
    };
    let text = "नमस्ते दुनिया. Hello world. ".repeat(200);
    let opts = CollectOptions {
        chunk: 64,
        max_tokens: 128,
        hessian: HessianBlocks::OFF,
        threads: Some(2),
        ..Default::default()
    };
    let cancel = std::sync::atomic::AtomicBool::new(true);
    let err = calib::collect_cancellable(&f16, &text, &opts, &cancel)
        .expect_err("a cancelled collection");
    assert!(matches!(err, calib::CalibError::Cancelled), "{err}");
    assert_eq!(err.to_string(), "calibration cancelled");
}

/// SIGTERM (what `kill`, `timeout` and a container stop send) in the middle
/// of a calibrated `quantize`: it stops inside the calibration, says so, and
/// leaves nothing in the output's folder (no file, no partial file).
#[cfg(unix)]
#[test]
fn sigterm_during_calibration_leaves_nothing_behind() {
    use std::io::{BufRead, BufReader};
    let Some((_, f16)) = common::smollm2("sigterm_calibration") else {
        return;
    };
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("smol-nf4.gguf");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_airavata"))
        .arg("quantize")
        .arg(&f16)
        .arg(&out)
        .args(["--allow-requantize", "--calibrate", "--threads", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Progress lines end in '\r'; split on both.
    let mut reader = BufReader::new(stderr);
    let mut seen = String::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\r', &mut buf).unwrap();
        assert!(n > 0, "quantize ended before calibrating:\n{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf));
        // The first chunk is done: the forward passes are under way.
        if seen.contains("calibrating: chunk 1/") {
            break;
        }
    }
    let pid = child.id().to_string();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    seen.push_str(&rest);
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "quantize succeeded after SIGTERM:\n{seen}"
    );
    assert!(seen.contains("interrupted: stopping"), "{seen}");
    assert!(seen.contains("cancelled"), "{seen}");
    // Stopped inside the calibration (not after its 32 chunks): it never got
    // to write the model.
    assert!(!seen.contains("chunk 32/32"), "{seen}");
    assert!(!seen.contains("wrote "), "{seen}");
    let left: Vec<_> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
