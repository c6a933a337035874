//! The figures of a comparison: printed as `compare.<figure>.<system>`
//! lines as each is measured, then written to `<out>/compare.md` (the
//! summary table) with a plot of the latency distributions,
//! `<out>/compare-latency.png`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::peers::System;

/// One measured figure: each system's median over the runs.
pub struct Figure {
    pub name: String,
    pub unit: &'static str,
    pub higher_is_better: bool,
    /// Each system's values, one per run, in run order.
    pub runs: Vec<(System, Vec<f64>)>,
    /// Goals for `tarn / peer`: at least (or, when lower is better, at
    /// most) this ratio.
    pub goals: Vec<(System, f64)>,
}

impl Figure {
    fn medians(&self) -> Vec<(System, f64)> {
        self.runs
            .iter()
            .map(|(s, v)| (*s, crate::bench_server::median(v.clone())))
            .collect()
    }

    /// `tarn / peer` for each peer measured.
    fn ratios(&self) -> Vec<(System, f64)> {
        let medians = self.medians();
        let Some(&(_, tarn)) = medians.iter().find(|(s, _)| *s == System::Tarn) else {
            return vec![];
        };
        medians
            .iter()
            .filter(|(s, _)| *s != System::Tarn)
            .map(|&(s, v)| (s, if v > 0.0 { tarn / v } else { f64::NAN }))
            .collect()
    }

    fn ratio_key(&self, peer: System) -> String {
        if self.runs.len() == 2 {
            "ratio".into()
        } else {
            format!("ratio_{}", peer.name())
        }
    }

    /// Whether the ratio against `peer` meets its goal (None: no goal).
    fn meets(&self, peer: System, ratio: f64) -> Option<bool> {
        let (_, goal) = self.goals.iter().find(|(s, _)| *s == peer)?;
        Some(if self.higher_is_better {
            ratio >= *goal
        } else {
            ratio <= *goal
        })
    }

    /// The `compare.*` lines.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .medians()
            .iter()
            .map(|(s, v)| {
                format!(
                    "compare.{}.{} {} {}",
                    self.name,
                    s.name(),
                    fmt(*v),
                    self.unit
                )
            })
            .collect();
        for (peer, r) in self.ratios() {
            out.push(format!(
                "compare.{}.{} {r:.2} x",
                self.name,
                self.ratio_key(peer)
            ));
        }
        out
    }
}

/// A latency distribution to plot: each system's samples, in ms.
pub struct Dist {
    pub title: String,
    pub series: Vec<(System, Vec<f64>)>,
}

/// Everything a comparison measured.
#[derive(Default)]
pub struct Report {
    pub command: String,
    /// `git describe --always --dirty` when the run started ("" outside
    /// a checkout): the report itself is in the tree.
    pub commit: String,
    pub runs: usize,
    pub figures: Vec<Figure>,
    pub dists: Vec<Dist>,
    /// Settings and side figures, one line each, under the table.
    pub notes: Vec<String>,
    pub systems: Vec<System>,
}

/// A value with a precision that suits its size.
pub fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

impl Report {
    /// Prints a figure's lines and keeps it.
    pub fn add(&mut self, figure: Figure) {
        for line in figure.lines() {
            out!("{line}");
        }
        self.figures.push(figure);
    }

    /// Writes `compare.md` and, with distributions to show,
    /// `compare-latency.png` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let plotted = !self.dists.is_empty() && {
            match plot(&self.dists, &dir.join("compare-latency.png")) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("no latency plot: {e:#}");
                    false
                }
            }
        };
        let md = self.markdown(plotted);
        let path = dir.join("compare.md");
        std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report: {}", path.display());
        Ok(())
    }

    fn markdown(&self, plotted: bool) -> String {
        let mut md = String::new();
        let commit = match self.commit.as_str() {
            "" => "an unknown commit".to_string(),
            c => format!("commit {c}"),
        };
        let _ = writeln!(md, "# tarn compared with its peers\n");
        let _ = writeln!(
            md,
            "`{}` on {}, {} ({} cores, Linux {}). Each value is the median of {} runs \
             alternating between the systems (tarn, peer, tarn, peer, ...); every \
             server ran as its own process on loopback, on the same machine as the \
             load. Ratios are tarn / peer: above 1 is better for rates, below 1 for \
             latencies.\n",
            self.command,
            first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            commit,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            first_line("uname", &["-r"]),
            self.runs,
        );
        let systems: Vec<System> = System::ALL
            .into_iter()
            .filter(|s| self.systems.contains(s))
            .collect();
        let mut header = "| figure | unit |".to_string();
        let mut rule = "|---|---|".to_string();
        for s in &systems {
            let _ = write!(header, " {} |", s.name());
            rule.push_str("---:|");
        }
        header.push_str(" tarn / peer | goal | |");
        rule.push_str("---|---|---|");
        let _ = writeln!(md, "{header}\n{rule}");
        for f in &self.figures {
            let medians = f.medians();
            let mut row = format!("| {} | {} |", f.name, f.unit);
            for s in &systems {
                match medians.iter().find(|(m, _)| m == s) {
                    Some((_, v)) => {
                        let _ = write!(row, " {} |", fmt(*v));
                    }
                    None => row.push_str(" |"),
                }
            }
            let (mut ratios, mut goals, mut met) = (vec![], vec![], vec![]);
            for (peer, r) in f.ratios() {
                ratios.push(format!("{r:.2} ({})", peer.name()));
                if let Some(ok) = f.meets(peer, r) {
                    let (_, g) = f
                        .goals
                        .iter()
                        .find(|(s, _)| *s == peer)
                        .copied()
                        .unwrap_or((peer, 0.0));
                    let cmp = if f.higher_is_better { "≥" } else { "≤" };
                    goals.push(format!("{cmp} {g} ({})", peer.name()));
                    met.push(if ok { "met" } else { "**missed**" });
                }
            }
            let _ = writeln!(
                md,
                "{row} {} | {} | {} |",
                ratios.join(", "),
                goals.join(", "),
                met.join(", ")
            );
        }
        let _ = writeln!(md, "\n## Settings and notes\n");
        for note in &self.notes {
            let _ = writeln!(md, "- {note}");
        }
        let _ = writeln!(md, "\n## Versions\n");
        for s in &systems {
            let _ = writeln!(md, "- {}: {}", s.name(), s.version());
        }
        if plotted {
            let _ = writeln!(
                md,
                "\n## Latency distributions\n\n![latency distributions](compare-latency.png)"
            );
        }
        md
    }
}

/// A command's first line of output, or "" if it cannot run.
pub fn first_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn color(s: System) -> plotters::style::RGBColor {
    use plotters::style::RGBColor;
    match s {
        System::Tarn => RGBColor(31, 119, 180),
        System::Redis => RGBColor(214, 39, 40),
        System::Etcd => RGBColor(44, 160, 44),
        System::Nats => RGBColor(255, 127, 14),
        System::Postgres => RGBColor(148, 103, 189),
    }
}

/// Registers DejaVu Sans (Debian's fonts-dejavu-core) as the plot font.
fn load_font() -> Result<()> {
    const CANDIDATES: [&str; 3] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    ];
    let bytes = CANDIDATES
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .context("no DejaVuSans.ttf: apt-get install fonts-dejavu-core")?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("DejaVuSans.ttf is not a font plotters can read"))
}

/// One panel per distribution: the share of samples at or below each
/// latency (a CDF), latency on a log axis.
fn plot(dists: &[Dist], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    load_font()?;
    let rows = dists.len().div_ceil(2);
    let root = BitMapBackend::new(path, (1400, 500 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((rows, 2));
    for (dist, panel) in dists.iter().zip(panels.iter()) {
        let all = dist.series.iter().flat_map(|(_, v)| v.iter().copied());
        let lo = all
            .clone()
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min);
        let hi = all.fold(0.0, f64::max);
        if !(lo.is_finite() && hi > lo) {
            continue;
        }
        let mut chart = ChartBuilder::on(panel)
            .caption(&dist.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d((lo * 0.9..hi * 1.1).log_scale(), 0.0..100.0)?;
        chart
            .configure_mesh()
            .x_desc("latency (ms, log scale)")
            .y_desc("% of samples at or below")
            .label_style(("sans-serif", 14))
            .draw()?;
        for (system, samples) in &dist.series {
            let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| *v > 0.0).collect();
            sorted.sort_by(f64::total_cmp);
            if sorted.is_empty() {
                continue;
            }
            let step = (sorted.len() / 1000).max(1);
            let n = sorted.len() as f64;
            let points: Vec<(f64, f64)> = sorted
                .iter()
                .enumerate()
                .filter(|(i, _)| i % step == 0 || *i == sorted.len() - 1)
                .map(|(i, v)| (*v, (i + 1) as f64 * 100.0 / n))
                .collect();
            let c = color(*system);
            chart
                .draw_series(LineSeries::new(points, c.stroke_width(2)))?
                .label(system.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(name: &str, higher: bool, runs: Vec<(System, Vec<f64>)>) -> Figure {
        Figure {
            name: name.into(),
            unit: "x/s",
            higher_is_better: higher,
            runs,
            goals: vec![(System::Redis, 0.67), (System::Etcd, 10.0)],
        }
    }

    #[test]
    fn lines_give_medians_and_tarn_over_peer_ratios() {
        let one_peer = figure(
            "sets",
            true,
            vec![
                (System::Tarn, vec![9.0, 1.0, 5.0]),
                (System::Redis, vec![10.0, 10.0, 2.0]),
            ],
        );
        assert_eq!(
            one_peer.lines(),
            [
                "compare.sets.tarn 5.000 x/s",
                "compare.sets.redis 10.0 x/s",
                "compare.sets.ratio 0.50 x",
            ]
        );
        let two_peers = figure(
            "lat",
            false,
            vec![
                (System::Tarn, vec![2.0]),
                (System::Redis, vec![4.0]),
                (System::Etcd, vec![1.0]),
            ],
        );
        let lines = two_peers.lines();
        assert!(
            lines.contains(&"compare.lat.ratio_redis 0.50 x".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"compare.lat.ratio_etcd 2.00 x".to_string()),
            "{lines:?}"
        );
    }

    #[test]
    fn goals_are_met_in_the_direction_of_better() {
        let rate = figure("r", true, vec![]);
        assert_eq!(rate.meets(System::Redis, 0.7), Some(true));
        assert_eq!(rate.meets(System::Redis, 0.6), Some(false));
        assert_eq!(rate.meets(System::Nats, 0.6), None);
        let latency = figure("l", false, vec![]);
        assert_eq!(latency.meets(System::Redis, 0.5), Some(true));
        assert_eq!(latency.meets(System::Redis, 0.9), Some(false));
    }

    #[test]
    fn the_markdown_table_marks_missed_goals() {
        let report = Report {
            command: "tarn bench compare".into(),
            commit: "abc".into(),
            runs: 5,
            figures: vec![figure(
                "sets",
                true,
                vec![(System::Tarn, vec![5.0]), (System::Redis, vec![10.0])],
            )],
            systems: vec![System::Tarn, System::Redis],
            notes: vec!["a note".into()],
            ..Default::default()
        };
        let md = report.markdown(false);
        assert!(md.contains("commit abc"), "{md}");
        assert!(
            md.contains(
                "| sets | x/s | 5.000 | 10.0 | 0.50 (redis) | ≥ 0.67 (redis) | **missed** |"
            ),
            "{md}"
        );
        assert!(md.contains("- a note"), "{md}");
        assert!(
            !md.contains("compare-latency.png"),
            "no plot, no link: {md}"
        );
    }
}
