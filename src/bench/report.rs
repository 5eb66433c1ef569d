//! Report output: markdown tables, JSON files, and loading reports back.

use std::fmt::Write as _;
use std::path::Path;

use super::args::BenchArgs;
use super::stats::Summary;
use super::{render_svg, BenchError, BenchReport, Scenario};
use crate::engine::stats::Phase;

/// Markdown table of one report.
pub fn render_markdown(report: &BenchReport) -> String {
    render_comparison(std::slice::from_ref(report))
}

/// One markdown document comparing `reports`: a line of settings per run, then
/// one table with a row per (run, concurrency level). Latencies in ms.
pub fn render_comparison(reports: &[BenchReport]) -> String {
    let mut s = String::from("## airavata bench\n\n");
    for r in reports {
        let prompt = match (&r.prompt_lengths, r.prompt_tokens_requested) {
            (Some(spec), _) if !spec.starts_with("fixed:") => format!(
                "lengths `{}` (mean {} chars{}{})",
                md_escape(spec),
                r.prompt_chars,
                r.prompt_set
                    .as_deref()
                    .map(|o| format!("; {}", md_escape(o)))
                    .unwrap_or_default(),
                r.seed.map(|s| format!("; seed {s}")).unwrap_or_default(),
            ),
            (_, Some(n)) => format!("~{n} tokens ({} chars)", r.prompt_chars),
            _ => format!("{} chars", r.prompt_chars),
        };
        let scenario = match r.scenario {
            Scenario::Sweep => "sweep",
            Scenario::OldApp => "old-app",
        };
        let _ = writeln!(
            s,
            "- **{}**: {scenario}, `{}` at {}{}, prompt {prompt}, max tokens {}, {}, warm-up {}",
            md_escape(&r.label),
            r.api.name(),
            md_escape(&r.url),
            r.model
                .as_deref()
                .map(|m| format!(", model `{}`", md_escape(m)))
                .unwrap_or_default(),
            r.max_tokens,
            if r.stream { "streamed" } else { "not streamed" },
            r.warmup,
        );
    }
    s.push_str(
        "\n| run | conc | ok | err | req/s | out tok/s | tok/s/stream p50 \
         | TTFT p50 | TTFT p99 | server TTFT p50 | ITL p50 | ITL p99 | e2e p50 | e2e p99 | e2e mean |\n",
    );
    s.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for r in reports {
        let label = md_escape(&r.label);
        for l in &r.levels {
            let p = |x: &Option<Summary>, f: fn(&Summary) -> f64| x.as_ref().map(f);
            let cells = [
                num(Some(l.requests_per_s), 2),
                num(l.output_tokens_per_s, 1),
                num(p(&l.per_stream_tokens_per_s, |s| s.p50), 1),
                num(p(&l.ttft_ms, |s| s.p50), 1),
                num(p(&l.ttft_ms, |s| s.p99), 1),
                num(p(&l.server_ttft_ms, |s| s.p50), 1),
                num(p(&l.itl_ms, |s| s.p50), 1),
                num(p(&l.itl_ms, |s| s.p99), 1),
                num(p(&l.e2e_ms, |s| s.p50), 1),
                num(p(&l.e2e_ms, |s| s.p99), 1),
                num(p(&l.e2e_ms, |s| s.mean), 1),
            ];
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} |",
                l.concurrency,
                l.ok,
                l.errors,
                cells.join(" | ")
            );
        }
    }
    prompt_table(&mut s, reports);
    turn_table(&mut s, reports);
    engine_table(&mut s, reports);
    let errors: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            r.levels.iter().filter(|l| l.errors > 0).map(move |l| {
                let kinds: Vec<String> = l
                    .error_kinds
                    .iter()
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect();
                let sample = l
                    .error_samples
                    .first()
                    .map(|e| format!(" (e.g. {})", md_escape(e)))
                    .unwrap_or_default();
                format!(
                    "- {} c={}: {}{sample}",
                    md_escape(&r.label),
                    l.concurrency,
                    kinds.join(", ")
                )
            })
        })
        .collect();
    if !errors.is_empty() {
        s.push_str("\nErrors:\n\n");
        for e in errors {
            s.push_str(&e);
            s.push('\n');
        }
    }
    s
}

/// The prompt lengths each level sent, as the server counted them.
fn prompt_table(s: &mut String, reports: &[BenchReport]) {
    if !reports
        .iter()
        .any(|r| r.levels.iter().any(|l| l.prompt_tokens.is_some()))
    {
        return;
    }
    s.push_str(
        "\nPrompt tokens (the server's `usage.prompt_tokens`):\n\n\
         | run | conc | lengths | requests | mean | p50 | p90 | max |\n\
         |---|--:|---|--:|--:|--:|--:|--:|\n",
    );
    for r in reports {
        for l in &r.levels {
            let Some(p) = &l.prompt_tokens else {
                continue;
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.1} | {:.0} | {:.0} | {:.0} |",
                md_escape(&r.label),
                l.concurrency,
                md_escape(r.prompt_lengths.as_deref().unwrap_or("-")),
                p.count,
                p.mean,
                p.p50,
                p.p90,
                p.max
            );
        }
    }
}

/// `chat:TURNS`: prompt tokens and TTFT per turn.
fn turn_table(s: &mut String, reports: &[BenchReport]) {
    if !reports
        .iter()
        .any(|r| r.levels.iter().any(|l| !l.turns.is_empty()))
    {
        return;
    }
    s.push_str(
        "\nChat turns (each sends the history so far):\n\n\
         | run | conc | turn | requests | ok | prompt tokens mean | p50 | max | TTFT p50 | TTFT p90 |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in reports {
        for l in &r.levels {
            for t in &l.turns {
                let p = |x: &Option<Summary>, f: fn(&Summary) -> f64| x.as_ref().map(f);
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    md_escape(&r.label),
                    l.concurrency,
                    t.turn,
                    t.requests,
                    t.ok,
                    num(p(&t.prompt_tokens, |s| s.mean), 1),
                    num(p(&t.prompt_tokens, |s| s.p50), 0),
                    num(p(&t.prompt_tokens, |s| s.max), 0),
                    num(p(&t.ttft_ms, |s| s.p50), 1),
                    num(p(&t.ttft_ms, |s| s.p90), 1),
                );
            }
        }
    }
}

/// Our server's step profile per level, when the runs have one.
fn engine_table(s: &mut String, reports: &[BenchReport]) {
    if !reports
        .iter()
        .any(|r| r.levels.iter().any(|l| l.engine.is_some()))
    {
        return;
    }
    s.push_str(
        "\nEngine steps (server side, from /metrics; ms per step):\n\n\
         | run | conc | steps | mixed % | tokens/step | micro-batches/step | dummies/step \
         | graphs reused/step | plan | decode | sync | sample | emit | linger | total |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in reports {
        for l in &r.levels {
            let Some(e) = &l.engine else {
                continue;
            };
            let phases: Vec<String> = Phase::ALL
                .iter()
                .map(|p| format!("{:.2}", e.phase_ms(p.name())))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} | {} | {:.2} |",
                md_escape(&r.label),
                l.concurrency,
                e.steps,
                e.mixed_fraction * 100.0,
                e.tokens_per_step,
                e.micro_batches_per_step,
                e.padded_tokens_per_step,
                e.reused_graphs_per_step,
                phases.join(" | "),
                e.total_ms_per_step
            );
        }
    }
}

fn num(x: Option<f64>, decimals: usize) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".to_string(),
    }
}

/// Makes text safe inside a markdown table cell (no `|`, no newlines).
fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// Loads a JSON file holding one report or an array of reports.
pub fn load_reports(path: &Path) -> Result<Vec<BenchReport>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |source| BenchError::BadReport {
        path: path.to_path_buf(),
        source,
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(bad)?;
    if value.is_array() {
        serde_json::from_value(value).map_err(bad)
    } else {
        serde_json::from_value(value).map(|r| vec![r]).map_err(bad)
    }
}

/// Serialises reports: a single object for one report, an array otherwise.
pub fn to_json(reports: &[BenchReport]) -> Result<String, BenchError> {
    Ok(match reports {
        [one] => serde_json::to_string_pretty(one)?,
        many => serde_json::to_string_pretty(many)?,
    })
}

fn write(path: &Path, contents: &str) -> Result<(), BenchError> {
    std::fs::write(path, contents).map_err(|source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `--json`, `--markdown` and `--svg` (those given) for `reports`.
pub fn write_outputs(reports: &[BenchReport], args: &BenchArgs) -> Result<(), BenchError> {
    if let Some(p) = &args.json {
        write(p, &to_json(reports)?)?;
    }
    if let Some(p) = &args.markdown {
        write(p, &render_comparison(reports))?;
    }
    if let Some(p) = &args.svg {
        write(p, &render_svg(reports))?;
    }
    Ok(())
}
