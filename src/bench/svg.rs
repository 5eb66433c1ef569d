//! A hand-written SVG plot: aggregate output tokens/s and TTFT p50 against
//! concurrency (log2 x axis), one polyline per run.

use std::fmt::Write as _;

use super::{BenchReport, LevelReport};

const W: f64 = 960.0;
const H: f64 = 375.0;
const PANEL_W: f64 = 380.0;
const PANEL_H: f64 = 250.0;
const TOP: f64 = 50.0;
const LEFTS: [f64; 2] = [80.0, 560.0];
const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

type Metric = fn(&LevelReport) -> Option<f64>;

/// Renders the plot for `reports` (each report is one series in both panels).
pub fn render_svg(reports: &[BenchReport]) -> String {
    let panels: [(&str, Metric); 2] = [
        ("Aggregate output tokens/s", |l| l.output_tokens_per_s),
        ("TTFT p50 (ms)", |l| l.ttft_ms.map(|s| s.p50)),
    ];
    let mut xs: Vec<usize> = reports
        .iter()
        .flat_map(|r| r.levels.iter().map(|l| l.concurrency.max(1)))
        .collect();
    xs.sort_unstable();
    xs.dedup();
    let legend_h = 22.0 * reports.len() as f64;
    let height = H + legend_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{W}" height="{height}" fill="white"/>"#
    );
    for (i, (title, metric)) in panels.iter().enumerate() {
        panel(&mut s, LEFTS[i], title, *metric, reports, &xs);
    }
    for (i, r) in reports.iter().enumerate() {
        let y = H + 22.0 * i as f64;
        let c = COLORS[i % COLORS.len()];
        let _ = writeln!(
            s,
            r#"<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{c}" stroke-width="2.5"/><text x="{tx}" y="{ty}">{label}</text>"#,
            x1 = LEFTS[0],
            x2 = LEFTS[0] + 30.0,
            tx = LEFTS[0] + 40.0,
            ty = y + 4.0,
            label = xml_escape(&r.label),
        );
    }
    s.push_str("</svg>\n");
    s
}

fn panel(
    s: &mut String,
    left: f64,
    title: &str,
    metric: Metric,
    reports: &[BenchReport],
    xs: &[usize],
) {
    let bottom = TOP + PANEL_H;
    let ymax = reports
        .iter()
        .flat_map(|r| r.levels.iter().filter_map(metric))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let (step, ymax) = nice_axis(ymax);
    let lx = |c: usize| -> f64 {
        let (lo, hi) = match (xs.first(), xs.last()) {
            (Some(&lo), Some(&hi)) if hi > lo => ((lo as f64).log2(), (hi as f64).log2()),
            _ => return left + PANEL_W / 2.0,
        };
        left + 20.0 + ((c.max(1) as f64).log2() - lo) / (hi - lo) * (PANEL_W - 40.0)
    };
    let ly = |v: f64| bottom - v / ymax * PANEL_H;

    let _ = writeln!(
        s,
        r#"<text x="{x}" y="{y}" text-anchor="middle" font-size="14" font-weight="bold">{t}</text>"#,
        x = left + PANEL_W / 2.0,
        y = TOP - 18.0,
        t = xml_escape(title)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#444"/>"##
    );
    // Y grid and labels.
    let mut k = 0.0;
    while k * step <= ymax + step * 1e-9 {
        let v = k * step;
        let y = ly(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{x2}" y2="{y:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{label}</text>"##,
            x2 = left + PANEL_W,
            tx = left - 6.0,
            ty = y + 4.0,
            label = fmt_tick(v),
        );
        k += 1.0;
    }
    // X ticks.
    for &c in xs {
        let x = lx(c);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{bottom}" x2="{x:.1}" y2="{y2}" stroke="#444"/><text x="{x:.1}" y="{ty}" text-anchor="middle">{c}</text>"##,
            y2 = bottom + 5.0,
            ty = bottom + 18.0,
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{x}" y="{y}" text-anchor="middle">concurrency (log scale)</text>"#,
        x = left + PANEL_W / 2.0,
        y = bottom + 36.0
    );
    // Series.
    for (i, r) in reports.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = r
            .levels
            .iter()
            .filter_map(|l| {
                metric(l)
                    .filter(|v| v.is_finite())
                    .map(|v| (lx(l.concurrency), ly(v)))
            })
            .collect();
        let list: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2.5" points="{}"><title>{}</title></polyline>"#,
            list.join(" "),
            xml_escape(&r.label)
        );
        for (x, y) in pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{color}"/>"#
            );
        }
    }
}

/// A 1/2/5×10^k tick step for about five ticks, and the axis top (a multiple
/// of the step, at least `max`).
fn nice_axis(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 5.0);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    (step, (max / step).ceil().max(1.0) * step)
}

fn fmt_tick(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.2}")
    }
}

/// Escapes text for XML content and attributes.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axis_steps() {
        assert_eq!(nice_axis(100.0), (20.0, 100.0));
        assert_eq!(nice_axis(93.0), (20.0, 100.0));
        assert_eq!(nice_axis(0.0), (1.0, 5.0));
        let (step, top) = nice_axis(0.37);
        assert!((step - 0.1).abs() < 1e-12 && (top - 0.4).abs() < 1e-9);
    }

    #[test]
    fn escapes() {
        assert_eq!(xml_escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
