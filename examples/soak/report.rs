//! The tunnel's resident memory and open descriptors over the run, and the final table (as
//! text for the terminal and as Markdown for the README).

use crate::stats::Stats;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::time::{Instant, sleep};

/// One look at the tunnel process.
#[derive(Clone, Copy)]
pub struct Sample {
    pub secs: f64,
    pub rss_kib: u64,
    pub fds: u64,
}

fn sample(pid: u32, start: Instant) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let rss_kib = rss.split_whitespace().nth(1)?.parse().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample {
        secs: start.elapsed().as_secs_f64(),
        rss_kib,
        fds,
    })
}

/// Samples the tunnel every 2 s until `until`.
pub async fn sampler(pid: u32, start: Instant, until: Instant) -> Vec<Sample> {
    let mut samples = Vec::new();
    loop {
        samples.extend(sample(pid, start));
        if Instant::now() >= until {
            return samples;
        }
        sleep(Duration::from_secs(2)).await;
    }
}

/// Everything the table shows.
pub struct Summary<'a> {
    pub secs: f64,
    pub stats: &'a Stats,
    pub samples: &'a [Sample],
    pub failovers_seen: Option<f64>,
    pub reloads_ok: Option<f64>,
}

impl Summary<'_> {
    fn rows(&self) -> Vec<(String, String)> {
        let s = self.stats;
        let served = s.served.load(Relaxed);
        let mut rows = vec![
            ("minutes run".into(), format!("{:.1}", self.secs / 60.0)),
            (
                "requests sent / served".into(),
                format!("{} / {served}", s.sent.load(Relaxed)),
            ),
            (
                "requests served per second".into(),
                format!("{:.0}", served as f64 / self.secs),
            ),
        ];
        let faults = s.faults();
        let text: Vec<String> = faults
            .iter()
            .map(|(k, [ok, failed])| match failed {
                0 => format!("{k} {ok}"),
                f => format!("{k} {ok} (+{f} that did not complete)"),
            })
            .collect();
        rows.push(("faults injected".into(), or_none(text.join(", "))));
        let seen = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.0}"));
        rows.push((
            "tunnel's count: failovers followed / reloads".into(),
            format!("{} / {}", seen(self.failovers_seen), seen(self.reloads_ok)),
        ));
        for (kind, [during, outside]) in s.errors() {
            rows.push((
                format!("error: `{kind}`"),
                format!("{during} during faults, {outside} outside"),
            ));
        }
        rows.push((
            "replies to the wrong client".into(),
            s.wrong.load(Relaxed).to_string(),
        ));
        rows.push((
            "acknowledged writes lost".into(),
            s.lost.load(Relaxed).to_string(),
        ));
        rows.push((
            "pub/sub: delivered / received / missed".into(),
            format!(
                "{} / {} / {}",
                s.published.load(Relaxed),
                s.received.load(Relaxed),
                s.missed.load(Relaxed)
            ),
        ));
        rows.push((
            "tunnel RSS MiB: start / warm-up / end / max".into(),
            self.series(|x| x.rss_kib as f64 / 1024.0, 1),
        ));
        rows.push((
            "tunnel open fds: start / warm-up / end / max".into(),
            self.series(|x| x.fds as f64, 0),
        ));
        rows
    }

    /// Start, after warm-up (a quarter of the run), end and max of one measure.
    fn series(&self, f: impl Fn(&Sample) -> f64, digits: usize) -> String {
        let (Some(first), Some(last)) = (self.samples.first(), self.samples.last()) else {
            return "no samples".into();
        };
        let warm = self
            .samples
            .iter()
            .find(|x| x.secs >= self.secs / 4.0)
            .unwrap_or(last);
        let max = self.samples.iter().map(&f).fold(0.0, f64::max);
        let v: Vec<String> = [f(first), f(warm), f(last), max]
            .iter()
            .map(|v| format!("{v:.digits$}"))
            .collect();
        v.join(" / ")
    }

    pub fn print(&self) {
        let rows = self.rows();
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        println!();
        for (k, v) in &rows {
            println!("{k:<width$}  {v}");
        }
        println!("\n| soak | |\n|---|---|");
        for (k, v) in &rows {
            println!("| {k} | {v} |");
        }
        let examples = self.stats.examples();
        if !examples.is_empty() {
            println!("\nfirst failures:");
            for e in examples {
                println!("  {e}");
            }
        }
    }
}

fn or_none(s: String) -> String {
    if s.is_empty() { "none".into() } else { s }
}
