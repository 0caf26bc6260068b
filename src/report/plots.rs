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

/// Sizes in pixels: text (legible at 100% zoom), the chart's margin, the x axis' label area,
/// a legend row and margin, and a point's radius.
const LABEL_FONT: u32 = 16;
const CAPTION_FONT: u32 = 20;
const MARGIN: u32 = 12;
const X_LABEL_AREA: u32 = 48;
const LEGEND_ROW: u32 = 22;
const LEGEND_MARGIN: u32 = 10;
const DOT: u32 = 5;

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a chart: {e:?}")
}

/// Where a chart's data go in a `width` × `height` picture: the axes' ranges (legend room
/// kept free of data), the label area, and for a chart on its side its rows.
struct Geometry {
    horizontal: bool,
    rows: usize,
    categories: Vec<String>,
    y_label_area: u32,
    x_range: std::ops::Range<f64>,
    y_range: std::ops::Range<f64>,
}

impl Geometry {
    fn of(chart: &Chart, width: u32, height: u32) -> Self {
        let finite = |v: &f64| v.is_finite();
        let horizontal = chart.categories.is_some();
        let rows = chart.categories.as_ref().map_or(0, Vec::len);
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
        let categories = chart.categories.clone().unwrap_or_default();
        let longest = categories
            .iter()
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(0);
        let y_label_area = if horizontal {
            (30 + 8 * longest) as u32
        } else {
            64
        };
        // Room for the legend (upper right), in pixels, kept free of data: above the data, or
        // right of it on a chart on its side. A point is drawn with a radius of DOT px.
        let legend_h = LEGEND_MARGIN * 2 + LEGEND_ROW * chart.series.len() as u32 + DOT;
        let label_chars = chart
            .series
            .iter()
            .map(|s| s.label.chars().count())
            .max()
            .unwrap_or(0) as u32;
        let legend_w = LEGEND_MARGIN * 2 + 24 + LABEL_FONT * 6 / 10 * label_chars + DOT;
        let plot_h = height.saturating_sub(2 * MARGIN + CAPTION_FONT + 12 + X_LABEL_AREA);
        let plot_w = width.saturating_sub(2 * MARGIN + y_label_area);
        // The share of the axis the legend takes, and the padding that leaves it free when the
        // data take the rest (below = 5% of the data's span).
        let room = |legend: u32, plot: u32| -> f64 {
            let f = (f64::from(legend) / f64::from(plot.max(1))).min(0.8);
            1.05 * f / (1.0 - f)
        };
        let (x_range, y_range) = if horizontal {
            (
                padded(min(&values), max(&values), 0.05, room(legend_w, plot_w)),
                -0.5..(rows as f64 - 0.5),
            )
        } else {
            (
                padded(min(&steps), max(&steps), 0.03, 0.03),
                padded(min(&values), max(&values), 0.05, room(legend_h, plot_h)),
            )
        };
        Self {
            horizontal,
            rows,
            categories,
            y_label_area,
            x_range,
            y_range,
        }
    }

    /// Where point (x, y) of series `i` of `n` is drawn: on a chart on its side a category's
    /// row counts from the top, and the series of one row sit one above the other, so that
    /// equal values do not hide each other.
    fn at(&self, (x, y): (f64, f64), i: usize, n: usize) -> (f64, f64) {
        if !self.horizontal {
            return (x, y);
        }
        let shift = if n > 1 {
            (i as f64 - (n as f64 - 1.0) / 2.0) * (0.75 / n as f64)
        } else {
            0.0
        };
        (y, self.rows as f64 - 1.0 - x + shift)
    }
}

/// The chart as an SVG document (`width` × `height` pixels). A chart with categories is drawn
/// on its side: one row per category, top to bottom, values along the horizontal axis (long
/// names stay readable).
pub fn svg(chart: &Chart, width: u32, height: u32) -> Result<String> {
    let g = Geometry::of(chart, width, height);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut c = ChartBuilder::on(&root)
            .caption(&chart.title, ("sans-serif", CAPTION_FONT))
            .margin(MARGIN)
            .x_label_area_size(X_LABEL_AREA)
            .y_label_area_size(g.y_label_area)
            .build_cartesian_2d(g.x_range.clone(), g.y_range.clone())
            .map_err(err)?;
        let number = |v: &f64| -> String {
            if v.fract() == 0.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        };
        let rows = g.rows;
        let row_name = |y: &f64| -> String {
            let i = y.round();
            let row = rows as f64 - 1.0 - i;
            if (y - i).abs() < 1e-6 && row >= 0.0 && (row as usize) < rows {
                g.categories[row as usize].clone()
            } else {
                String::new()
            }
        };
        let mut mesh = c.configure_mesh();
        mesh.light_line_style(WHITE.mix(0.0))
            .label_style(("sans-serif", LABEL_FONT))
            .axis_desc_style(("sans-serif", LABEL_FONT))
            .x_label_formatter(&number);
        if g.horizontal {
            mesh.x_desc(chart.y_label.as_str())
                .y_label_formatter(&row_name)
                .y_labels(rows * 2 + 1);
        } else {
            mesh.x_desc(chart.x_label.as_str())
                .y_desc(chart.y_label.as_str())
                .y_label_formatter(&number);
        }
        mesh.draw().map_err(err)?;
        let n = chart.series.len();
        for (i, s) in chart.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let at = |p: (f64, f64)| g.at(p, i, n);
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
                    .draw_series(pts.map(|p| Circle::new(p, DOT as i32, color.filled())))
                    .map_err(err)?,
                // An error bar draws its middle point as a circle.
                Mark::Spread(bars) if g.horizontal => c
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
                Rectangle::new([(x, y - 6), (x + 16, y + 6)], color.filled())
            });
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", LABEL_FONT))
            .margin(LEGEND_MARGIN)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(n: &roxmltree::Node, attr: &str) -> f64 {
        n.attribute(attr)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("<{}> has no number {attr}", n.tag_name().name()))
    }

    /// Circles `(cx, cy, r)`, the legend's box `(x, y, width, height)`, font sizes.
    type Parts = (Vec<(f64, f64, f64)>, (f64, f64, f64, f64), Vec<f64>);

    /// The circles' centres and radii, the legend's box (its unfilled border rectangle) and
    /// the font sizes of a chart's SVG.
    fn parts(svg: &str) -> Parts {
        let doc = roxmltree::Document::parse(svg).unwrap();
        let circles = doc
            .descendants()
            .filter(|n| n.has_tag_name("circle"))
            .map(|n| (num(&n, "cx"), num(&n, "cy"), num(&n, "r")))
            .collect();
        let legend: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some("none"))
            .map(|n| {
                (
                    num(&n, "x"),
                    num(&n, "y"),
                    num(&n, "width"),
                    num(&n, "height"),
                )
            })
            .collect();
        assert_eq!(legend.len(), 1, "one legend border: {legend:?}");
        let fonts = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| num(&n, "font-size"))
            .collect();
        (circles, legend[0], fonts)
    }

    /// A learning-curve chart whose kept checkpoint is the last step at the best score (the
    /// upper right corner, where the legend goes).
    fn curve(points: usize) -> Chart {
        let line: Vec<(f64, f64)> = (1..=points).map(|s| (s as f64, s as f64 / 2.0)).collect();
        let last = *line.last().unwrap();
        Chart {
            title: "fold 0: validation EM / F1".into(),
            x_label: "step".into(),
            y_label: "score".into(),
            series: vec![
                Series::line("validation F1", line.clone()),
                Series::line(
                    "validation EM",
                    line.iter().map(|p| (p.0, p.1 / 2.0)).collect(),
                ),
                Series::dots("kept checkpoint", vec![last]),
            ],
            categories: None,
        }
    }

    /// Issue 24 §7: no point is drawn under the legend, whatever the corner it is in.
    #[test]
    fn the_legend_covers_no_point() {
        for points in [1, 2, 10, 300] {
            let (circles, (x, y, w, h), _) = parts(&svg(&curve(points), 520, 300).unwrap());
            assert!(!circles.is_empty());
            for (cx, cy, r) in circles {
                let outside = cx + r < x || cx - r > x + w || cy + r < y || cy - r > y + h;
                assert!(
                    outside,
                    "{points} points: dot ({cx}, {cy}) r {r} under the legend {x},{y} {w}x{h}"
                );
            }
        }
    }

    /// Issue 24 §7: in a chart on its side, a row's equal values are drawn apart, so the fold
    /// mean is not hidden under the out-of-fold dot; and text is legible (at least 12 px).
    #[test]
    fn equal_values_of_a_row_are_drawn_apart_and_text_is_legible() {
        let chart = Chart {
            title: "sweep".into(),
            x_label: "variant".into(),
            y_label: "F1".into(),
            series: vec![
                Series {
                    label: "fold F1, mean ± std".into(),
                    points: vec![(0.0, 7.0), (1.0, 5.0)],
                    mark: Mark::Spread(vec![(6.0, 8.0), (4.0, 6.0)]),
                },
                Series::dots("out-of-fold F1", vec![(0.0, 7.0), (1.0, 5.0)]),
                Series::dots("test ensemble F1", vec![(0.0, 7.0), (1.0, 5.0)]),
            ],
            categories: Some(vec!["head=cnn".into(), "head=linear".into()]),
        };
        let (circles, _, fonts) = parts(&svg(&chart, 900, 190).unwrap());
        assert_eq!(circles.len(), 6, "{circles:?}");
        for (i, a) in circles.iter().enumerate() {
            for b in &circles[..i] {
                let d = ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt();
                assert!(d >= a.2.max(b.2) * 1.5, "{a:?} and {b:?} overlap");
            }
        }
        let (_, _, curve_fonts) = parts(&svg(&curve(10), 520, 300).unwrap());
        for f in fonts.iter().chain(&curve_fonts) {
            assert!(*f >= 12.0, "font-size {f}");
        }
    }
}
