//! Line and point charts drawn as SVG by `plotters`, to be inlined in `report.html`.
//!
//! Each series is drawn as one element kind, so a reader of the SVG can count them: a
//! [`Mark::Line`] series as one `<polyline>` holding its points, a [`Mark::Dots`] series as one
//! `<circle>` per point, and a [`Mark::Spread`] series as one `<circle>` per point with an
//! error bar (`<line>`s). Legend keys are `<rect>`s.

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// How a series is drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum Mark {
    Line,
    Dots,
    /// Points with a (low, high) bar each.
    Spread(Vec<(f64, f64)>),
}

#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub mark: Mark,
}

impl Series {
    pub fn line(label: &str, points: Vec<(f64, f64)>) -> Self {
        Self {
            label: label.to_string(),
            points,
            mark: Mark::Line,
        }
    }

    pub fn dots(label: &str, points: Vec<(f64, f64)>) -> Self {
        Self {
            label: label.to_string(),
            points,
            mark: Mark::Dots,
        }
    }
}

/// One chart.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Names of x = 0, 1, 2 … (a categorical axis) instead of numbers: the chart is drawn on
    /// its side, the first name at the top.
    pub categories: Option<Vec<String>>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// `lo..hi` widened by `below` and `above` of its span (a single value: of itself, or 1).
fn padded(lo: f64, hi: f64, below: f64, above: f64) -> std::ops::Range<f64> {
    if !lo.is_finite() || !hi.is_finite() {
        return 0.0..1.0;
    }
    let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
    (lo - below * span)..(hi + above * span)
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a chart: {e:?}")
}

/// The chart as an SVG document (`width` × `height` pixels). A chart with categories is drawn
/// on its side: one row per category, top to bottom, values along the horizontal axis (long
/// names stay readable).
pub fn svg(chart: &Chart, width: u32, height: u32) -> Result<String> {
    let finite = |v: &f64| v.is_finite();
    let horizontal = chart.categories.is_some();
    let rows = chart.categories.as_ref().map_or(0, Vec::len);
    // Where (x, y) of a series is drawn: a category's row counts from the top.
    let at = |(x, y): (f64, f64)| -> (f64, f64) {
        if horizontal {
            (y, rows as f64 - 1.0 - x)
        } else {
            (x, y)
        }
    };
    let values: Vec<f64> = chart
        .series
        .iter()
        .flat_map(|s| {
            let bars: Vec<f64> = match &s.mark {
                Mark::Spread(b) => b.iter().flat_map(|b| [b.0, b.1]).collect(),
                _ => Vec::new(),
            };
            s.points.iter().map(|p| p.1).chain(bars)
        })
        .filter(finite)
        .collect();
    let steps: Vec<f64> = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .filter(finite)
        .collect();
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // Room for the legend: above the data, or right of it on a chart on its side.
    let legend_room = 0.12 * (chart.series.len() as f64 + 1.0);
    let (x_range, y_range) = if horizontal {
        (
            padded(min(&values), max(&values), 0.05, 2.0 * legend_room),
            -0.5..(rows as f64 - 0.5),
        )
    } else {
        (
            padded(min(&steps), max(&steps), 0.03, 0.03),
            padded(min(&values), max(&values), 0.05, legend_room),
        )
    };
    let categories = chart.categories.clone().unwrap_or_default();
    let longest = categories
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(0);

    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut c = ChartBuilder::on(&root)
            .caption(&chart.title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(if horizontal {
                (30 + 6 * longest) as u32
            } else {
                56
            })
            .build_cartesian_2d(x_range, y_range)
            .map_err(err)?;
        let number = |v: &f64| -> String {
            if v.fract() == 0.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        };
        let row_name = |y: &f64| -> String {
            let i = y.round();
            let row = rows as f64 - 1.0 - i;
            if (y - i).abs() < 1e-6 && row >= 0.0 && (row as usize) < rows {
                categories[row as usize].clone()
            } else {
                String::new()
            }
        };
        let mut mesh = c.configure_mesh();
        mesh.light_line_style(WHITE.mix(0.0))
            .x_label_formatter(&number);
        if horizontal {
            mesh.x_desc(chart.y_label.as_str())
                .y_label_formatter(&row_name)
                .y_labels(rows * 2 + 1);
        } else {
            mesh.x_desc(chart.x_label.as_str())
                .y_desc(chart.y_label.as_str())
                .y_label_formatter(&number);
        }
        mesh.draw().map_err(err)?;
        for (i, s) in chart.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts = s
                .points
                .iter()
                .copied()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .map(at);
            let drawn = match &s.mark {
                Mark::Line => c
                    .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                    .map_err(err)?,
                Mark::Dots => c
                    .draw_series(pts.map(|p| Circle::new(p, 5, color.filled())))
                    .map_err(err)?,
                // An error bar draws its middle point as a circle.
                Mark::Spread(bars) if horizontal => c
                    .draw_series(s.points.iter().zip(bars).map(|(p, b)| {
                        let (x, y) = at(*p);
                        ErrorBar::new_horizontal(y, b.0, x, b.1, color.filled(), 10)
                    }))
                    .map_err(err)?,
                Mark::Spread(bars) => c
                    .draw_series(s.points.iter().zip(bars).map(|(p, b)| {
                        ErrorBar::new_vertical(p.0, b.0, p.1, b.1, color.filled(), 10)
                    }))
                    .map_err(err)?,
            };
            drawn.label(s.label.as_str()).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled())
            });
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}
