//! `airavata bench --prompt-lengths` against our server on the tiny test
//! model: multi-turn chats grow turn by turn, the long-tail mix reports its
//! distribution and repeats for a seed, and `fixed:N` is `--prompt-tokens N`.

mod common;

use airavata::bench::{self, render_markdown, Api, BenchArgs, BenchReport, PromptLengths};
use common::server::{start, test_model, test_options};

/// Short English user messages, so a few turns fit the test slots' context.
fn prompt_file(dir: &std::path::Path, prompts: &[&str]) -> std::path::PathBuf {
    let p = dir.join("prompts.jsonl");
    let lines: Vec<String> = prompts
        .iter()
        .map(|t| serde_json::json!({"messages": [{"role": "user", "content": t}]}).to_string())
        .collect();
    std::fs::write(&p, lines.join("\n")).expect("write prompt file");
    p
}

fn args(url: String, lengths: PromptLengths, file: &std::path::Path) -> BenchArgs {
    BenchArgs {
        url,
        concurrency: vec![2],
        warmup: 0,
        max_tokens: Some(6),
        prompt_lengths: Some(lengths),
        prompt_file: Some(file.to_path_buf()),
        ..BenchArgs::default()
    }
}

/// `chat:3` over each API: every conversation runs its three turns, and each
/// turn's prompt (as the server counted it) is longer than every prompt of
/// the turn before, because it holds the previous turns and their answers.
/// One message in the set, so conversations differ only in their tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_turns_grow_against_our_server() {
    let server = start(test_options(), test_model()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = prompt_file(dir.path(), &["Name three colours."]);
    for api in [Api::Generate, Api::OpenaiChat, Api::OpenaiCompletions] {
        let a = BenchArgs {
            api,
            requests: Some(6),
            ..args(server.url(), PromptLengths::Chat { turns: 3 }, &file)
        };
        let report = bench::run(a).await.expect("bench runs");
        assert_eq!(report.prompt_lengths.as_deref(), Some("chat:3"));
        let level = &report.levels[0];
        // 6 requests / 3 turns = 2 conversations, one per stream.
        assert_eq!((level.requests, level.ok), (6, 6), "{api:?}: {level:?}");
        assert_eq!(level.turns.len(), 3);
        let mut prev_max = 0.0;
        for t in &level.turns {
            assert_eq!((t.requests, t.ok), (2, 2), "{api:?} turn {}", t.turn);
            let p = t.prompt_tokens.as_ref().expect("usage.prompt_tokens");
            assert_eq!(p.count, 2);
            assert!(
                p.min > prev_max,
                "{api:?}: turn {} prompts {p:?} not longer than the previous turn's max {prev_max}",
                t.turn
            );
            prev_max = p.max;
        }
        // The level's distribution covers every turn.
        let all = level.prompt_tokens.as_ref().expect("level prompt tokens");
        assert_eq!(all.count, 6);
        assert_eq!(all.max, prev_max);
        let md = render_markdown(&report);
        assert!(
            md.contains("Chat turns") && md.contains("lengths `chat:3`"),
            "{md}"
        );
    }
    server.shutdown().await.expect("shutdown");
}

fn sorted_stats(r: &BenchReport) -> (usize, f64, f64, f64, f64) {
    let p = r.levels[0].prompt_tokens.expect("prompt tokens");
    (p.count, p.min, p.mean, p.p50, p.max)
}

/// `mix:8-60`: lengths vary across requests, the report states the spec,
/// the prompt set, the seed and the distribution; the same seed sends the
/// same lengths again, another seed others. `fixed:N` sends what
/// `--prompt-tokens N` sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mix_and_fixed_against_our_server() {
    let server = start(test_options(), test_model()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = prompt_file(dir.path(), &["Say hi.", "What is two plus two?", "Why?"]);
    let mix = PromptLengths::Mix { lo: 8, hi: 60 };
    let run = |seed: u64| {
        let a = BenchArgs {
            requests: Some(12),
            warmup: 1,
            seed,
            max_tokens: Some(2),
            ..args(server.url(), mix, &file)
        };
        bench::run(a)
    };
    let a = run(5).await.expect("bench runs");
    assert_eq!(a.prompt_lengths.as_deref(), Some("mix:8-60"));
    assert_eq!(a.seed, Some(5));
    assert!(
        a.prompt_set
            .as_deref()
            .is_some_and(|o| o.starts_with("3 prompts from ")),
        "{:?}",
        a.prompt_set
    );
    assert_eq!(a.prompt_tokens_requested, None);
    assert_eq!(a.levels[0].ok, 12);
    let (count, min, mean, p50, max) = sorted_stats(&a);
    assert_eq!(count, 12);
    assert!(
        min < mean && mean < max && p50 <= max,
        "{:?}",
        a.levels[0].prompt_tokens
    );
    // Ordered targets give ordered lengths: the longest target's prompt is
    // well over the shortest's.
    assert!(max > 2.0 * min, "{:?}", a.levels[0].prompt_tokens);
    assert_eq!(
        sorted_stats(&run(5).await.expect("again")),
        sorted_stats(&a)
    );
    assert_ne!(
        sorted_stats(&run(6).await.expect("seed 6")),
        sorted_stats(&a)
    );
    let md = render_markdown(&a);
    assert!(
        md.contains("Prompt tokens") && md.contains("| mix:8-60 | 12 |"),
        "{md}"
    );

    // fixed:N and --prompt-tokens N: the same prompt, the same count.
    let fixed = |a: BenchArgs| async move {
        let r = bench::run(BenchArgs {
            requests: Some(2),
            ..a
        })
        .await
        .expect("bench runs");
        (
            r.prompt_tokens_requested,
            r.prompt_chars,
            r.levels[0].prompt_tokens.map(|p| (p.min, p.max)),
        )
    };
    let by_spec = fixed(args(server.url(), PromptLengths::Fixed(40), &file)).await;
    let by_tokens = fixed(BenchArgs {
        prompt_lengths: None,
        prompt_file: None,
        prompt_tokens: Some(40),
        ..args(server.url(), PromptLengths::Fixed(40), &file)
    })
    .await;
    assert_eq!(by_spec, by_tokens);
    assert_eq!(by_spec.0, Some(40));
    server.shutdown().await.expect("shutdown");
}
