//! `--plot out.png`: throughput and p99 latency by client count, one column
//! per workload, one line per target.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::RunResult;

/// Where Debian (`fonts-dejavu-core`) and other distributions keep a sans font.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("no font for the plot's text: install fonts-dejavu-core (looked for {0:?})")]
    NoFont(&'static [&'static str]),
    #[error("nothing to plot")]
    Empty,
    #[error("drawing {path}: {message}")]
    Draw { path: PathBuf, message: String },
}

fn load_font() -> Result<(), PlotError> {
    for path in FONT_PATHS {
        if let Ok(bytes) = std::fs::read(path) {
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
        }
    }
    Err(PlotError::NoFont(FONT_PATHS))
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws `results` into the PNG at `path`.
pub fn draw(results: &[RunResult], path: &Path) -> Result<(), PlotError> {
    if results.is_empty() {
        return Err(PlotError::Empty);
    }
    load_font()?;
    let fail = |e: &dyn std::fmt::Display| PlotError::Draw {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let workloads: Vec<String> = ordered_unique(results.iter().map(|r| r.workload.clone()));
    let targets: Vec<String> = ordered_unique(results.iter().map(|r| r.target.clone()));
    let clients: BTreeSet<usize> = results.iter().map(|r| r.clients).collect();
    let max_clients = clients.iter().max().copied().unwrap_or(1).max(2) as f64 * 1.2;
    let key_points: Vec<f64> = clients.iter().map(|&c| c as f64).collect();

    let width = 420 * workloads.len() as u32;
    let root = BitMapBackend::new(path, (width.max(640), 820)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let (title, body) = root.split_vertically(40);
    title
        .titled(
            "kvs-bench: throughput and p99 latency by client count",
            ("sans-serif", 24),
        )
        .map_err(|e| fail(&e))?;
    let panels = body.split_evenly((2, workloads.len()));

    for (column, workload) in workloads.iter().enumerate() {
        let of_workload: Vec<&RunResult> = results.iter().filter(|r| &r.workload == workload).collect();
        let max_ops = of_workload.iter().map(|r| r.throughput).fold(1.0, f64::max) * 1.1;
        let max_p99 = of_workload
            .iter()
            .map(|r| r.latency.p99_us / 1_000.0)
            .fold(0.1, f64::max)
            * 1.1;

        for (row, (caption, y_max, y_desc)) in [
            (format!("{workload}: throughput"), max_ops, "ops/s"),
            (format!("{workload}: p99 latency"), max_p99, "ms"),
        ]
        .into_iter()
        .enumerate()
        {
            let area = &panels[row * workloads.len() + column];
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 16))
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(
                    (1f64..max_clients).log_scale().with_key_points(key_points.clone()),
                    0f64..y_max,
                )
                .map_err(|e| fail(&e))?;
            chart
                .configure_mesh()
                .x_desc("clients")
                .y_desc(y_desc)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| {
                    if *y >= 100.0 {
                        format!("{y:.0}")
                    } else {
                        format!("{y:.1}")
                    }
                })
                .light_line_style(TRANSPARENT)
                .label_style(("sans-serif", 12))
                .draw()
                .map_err(|e| fail(&e))?;
            for (index, target) in targets.iter().enumerate() {
                let mut points: Vec<(f64, f64)> = of_workload
                    .iter()
                    .filter(|r| &r.target == target)
                    .map(|r| {
                        let y = if row == 0 {
                            r.throughput
                        } else {
                            r.latency.p99_us / 1_000.0
                        };
                        (r.clients as f64, y)
                    })
                    .collect();
                if points.is_empty() {
                    continue;
                }
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                let color = COLORS[index % COLORS.len()];
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                    .map_err(|e| fail(&e))?
                    .label(target.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
                chart
                    .draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| fail(&e))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 12))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|e| fail(&e))?;
        }
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

fn ordered_unique(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    items.filter(|item| seen.insert(item.clone())).collect()
}
