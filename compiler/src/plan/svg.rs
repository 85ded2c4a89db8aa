//! A picture of a memory plan: x is the program step, y the byte offset, one rectangle per arena
//! value from the step that first writes it to the last step that reads it (the planner's own
//! lifetimes, [`super::lifetime::intervals`]). Buffers are stacked bottom to top; their
//! boundaries, the target's buffer limit and the lower bound are horizontal lines.
//!
//! Drawn from a [`Program`] alone (the offsets are in its storage), so a bundle's plan can be
//! drawn without the model it came from.

use super::lifetime::{intervals, lower_bound, Interval};
use crate::passes::split::is_piece_name;
use kiln_formats::program::{Program, StorageKind};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// What a planned value holds, for its colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TensorKind {
    /// An intermediate result.
    Activation,
    /// A KV cache tensor: named `present…` or `past…`.
    KvCache,
    /// A piece the split pass made (see [`crate::passes::split::is_piece_name`]).
    SplitPiece,
}

impl TensorKind {
    pub fn of(name: &str) -> TensorKind {
        if is_piece_name(name) {
            TensorKind::SplitPiece
        } else if name.starts_with("present") || name.starts_with("past") {
            TensorKind::KvCache
        } else {
            TensorKind::Activation
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            TensorKind::Activation => "activation",
            TensorKind::KvCache => "KV cache",
            TensorKind::SplitPiece => "split piece",
        }
    }

    /// Fill colour, as `#rrggbb` in the SVG.
    pub fn color(self) -> RGBColor {
        match self {
            TensorKind::Activation => ACTIVATION,
            TensorKind::KvCache => KV_CACHE,
            TensorKind::SplitPiece => SPLIT_PIECE,
        }
    }
}

pub const ACTIVATION: RGBColor = RGBColor(0x4c, 0x72, 0xb0);
pub const KV_CACHE: RGBColor = RGBColor(0xdd, 0x84, 0x52);
pub const SPLIT_PIECE: RGBColor = RGBColor(0x55, 0xa8, 0x68);
/// Aggregates of tiny values.
pub const GROUP: RGBColor = RGBColor(0xb0, 0xb0, 0xb0);
pub const LIMIT: RGBColor = RGBColor(0xc4, 0x4e, 0x52);
pub const LOWER_BOUND: RGBColor = RGBColor(0x81, 0x72, 0xb3);
pub const BOUNDARY: RGBColor = RGBColor(0x20, 0x20, 0x20);

/// A colour as the SVG writes it (`#RRGGBB`), to find elements by colour.
pub fn svg_color(c: RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

/// How to draw.
#[derive(Clone, Debug)]
pub struct ChartOptions {
    /// The heading, e.g. `gpt2-ts: main [cpu]`.
    pub title: String,
    /// The target's buffer limit; `None` takes the program's own (`max_buffer`, 0 = none).
    pub limit: Option<u64>,
    pub width: u32,
    pub height: u32,
    /// Values under this fraction of the arena are drawn as aggregates once there are more than
    /// `group_above` values.
    pub tiny_fraction: f64,
    pub group_above: usize,
    /// How many of the largest values get their name written on them.
    pub labels: usize,
}

impl Default for ChartOptions {
    fn default() -> Self {
        ChartOptions {
            title: "memory plan".into(),
            limit: None,
            width: 1200,
            height: 700,
            tiny_fraction: 0.001,
            group_above: 300,
            labels: 8,
        }
    }
}

/// What was drawn: with it a test (or a caller) can check the picture against the plan.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChartSummary {
    /// Arena values in the program.
    pub tensors: usize,
    /// Values drawn as their own rectangle.
    pub drawn: usize,
    /// Aggregate rectangles, and how many tiny values they stand for.
    pub groups: usize,
    pub grouped: usize,
    /// Legend swatches (one per kind present, plus one for aggregates if any), drawn in the same
    /// colours as the rectangles.
    pub swatches: usize,
    pub labelled: usize,
    pub steps: usize,
    pub arena_bytes: u64,
    pub lower_bound_bytes: u64,
    pub buffers: Vec<u64>,
    /// The target's buffer limit, when there is one, and how many limit lines were drawn (one
    /// per buffer, at its start + the limit, when that is on the chart).
    pub limit: Option<u64>,
    pub limit_lines: usize,
}

/// Human-readable bytes: `512 B`, `12.0 KiB`, `3.50 MiB`.
pub fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v.abs() >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else if v.abs() >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// One arena value placed in the picture.
struct Placed {
    iv: Interval,
    kind: TensorKind,
    /// Offset in the stacked arena (buffer base + offset).
    y: u64,
}

/// Draws the memory plan of `p` as an SVG document.
pub fn memory_svg(p: &Program, opts: &ChartOptions) -> Result<(String, ChartSummary), String> {
    let (ivs, _) = intervals(p);
    let bases: Vec<u64> = p.buffers.iter().scan(0u64, |acc, &b| Some(std::mem::replace(acc, *acc + b))).collect();
    let arena: u64 = p.buffers.iter().sum();
    let placed: Vec<Placed> = ivs
        .iter()
        .filter_map(|iv| {
            let v = &p.values[iv.slot];
            let s = v.storage.as_ref().filter(|s| s.kind == StorageKind::Arena as i32)?;
            let base = bases.get(s.index as usize).copied().unwrap_or(0);
            Some(Placed { iv: *iv, kind: TensorKind::of(&v.name), y: base + s.offset })
        })
        .collect();
    let lower = lower_bound(&ivs, p.alignment.max(1));
    let limit = opts.limit.or((p.max_buffer > 0).then_some(p.max_buffer));
    let steps = p.steps.len() + 1;
    let mut summary = ChartSummary {
        tensors: placed.len(),
        steps: p.steps.len(),
        arena_bytes: arena,
        lower_bound_bytes: lower,
        buffers: p.buffers.clone(),
        limit,
        ..Default::default()
    };

    // Tiny values become aggregates once there are many: those in one buffer whose lifetimes
    // start and end in the same step bins are one rectangle per run of nearby offsets.
    let tiny_below = (arena as f64 * opts.tiny_fraction) as u64;
    let grouping = placed.len() > opts.group_above;
    let is_tiny = |pl: &Placed| grouping && pl.iv.size < tiny_below;
    let bin = steps.div_ceil(50).max(1);
    let gap = arena / 100;
    let mut by_range: std::collections::BTreeMap<(usize, usize, usize), Vec<(u64, u64)>> = Default::default();
    for pl in placed.iter().filter(|pl| is_tiny(pl)) {
        let buffer = bases.iter().rposition(|&b| b <= pl.y).unwrap_or(0);
        by_range.entry((buffer, pl.iv.first / bin, pl.iv.last / bin)).or_default().push((pl.y, pl.y + pl.iv.size));
        summary.grouped += 1;
    }
    // (first step, end step, low offset, high offset)
    let mut groups: Vec<(usize, usize, u64, u64)> = Vec::new();
    for ((_, b0, b1), mut spans) in by_range {
        spans.sort_unstable();
        let (x0, x1) = (b0 * bin, ((b1 + 1) * bin).min(steps));
        let mut run = spans[0];
        for &(lo, hi) in &spans[1..] {
            if lo <= run.1 + gap {
                run.1 = run.1.max(hi);
            } else {
                groups.push((x0, x1, run.0, run.1));
                run = (lo, hi);
            }
        }
        groups.push((x0, x1, run.0, run.1));
    }

    // Headroom above the arena for the limit line when it is near, else it is only named.
    let mut top = arena.max(lower).max(1) as f64 * 1.08;
    let limit_shown = limit.filter(|&l| (l as f64) <= arena.max(1) as f64 * 1.6);
    if let Some(l) = limit_shown {
        top = top.max(l as f64 * 1.05);
    }

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (opts.width, opts.height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (plot, side) = root.split_horizontally(opts.width.saturating_sub(300));
        let mut chart = ChartBuilder::on(&plot)
            .caption(&opts.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..steps as f64, 0f64..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("step")
            .y_desc("offset")
            .y_label_formatter(&|y| human_bytes(*y))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(|e| e.to_string())?;

        chart
            .draw_series(groups.iter().map(|&(x0, x1, lo, hi)| {
                Rectangle::new([(x0 as f64, lo as f64), (x1 as f64, hi as f64)], GROUP.mix(0.6).filled())
            }))
            .map_err(|e| e.to_string())?;
        summary.groups = groups.len();

        let drawn: Vec<&Placed> = placed.iter().filter(|pl| !is_tiny(pl)).collect();
        chart
            .draw_series(drawn.iter().map(|pl| {
                let (x0, x1) = (pl.iv.first as f64, (pl.iv.last + 1) as f64);
                let style = pl.kind.color().mix(0.8).filled();
                Rectangle::new([(x0 + 0.05, pl.y as f64), (x1 - 0.05, (pl.y + pl.iv.size) as f64)], style)
            }))
            .map_err(|e| e.to_string())?;
        summary.drawn = drawn.len();

        // Names on the largest few, skipping any that would overlap a name already written
        // (label boxes estimated in data units from the plot's size in pixels).
        let (px_x, px_y) = (
            steps as f64 / (opts.width.saturating_sub(300 + 110).max(100)) as f64,
            top / (opts.height.saturating_sub(110).max(100)) as f64,
        );
        let mut largest: Vec<&&Placed> = drawn.iter().collect();
        largest.sort_by_key(|pl| std::cmp::Reverse(pl.iv.size));
        let label_style =
            TextStyle::from(("sans-serif", 11).into_font()).color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
        let mut boxes: Vec<[f64; 4]> = Vec::new();
        for pl in largest.iter().take(opts.labels * 4) {
            if boxes.len() >= opts.labels {
                break;
            }
            let name = &p.values[pl.iv.slot].name;
            let chars: Vec<char> = name.chars().collect();
            let short: String = if chars.len() > 28 {
                format!("…{}", chars[chars.len() - 27..].iter().collect::<String>())
            } else {
                name.clone()
            };
            let w = short.chars().count() as f64 * 6.5 * px_x;
            let mid = (pl.y + pl.iv.size / 2) as f64;
            // From the value's first step, or ending at its last when that would run off the plot.
            let (at, style, x0) = if pl.iv.first as f64 + 0.3 + w <= steps as f64 {
                let x = pl.iv.first as f64 + 0.3;
                ((x, mid), label_style.clone(), x)
            } else {
                let x = (pl.iv.last + 1) as f64 - 0.3;
                ((x, mid), label_style.clone().pos(Pos::new(HPos::Right, VPos::Center)), x - w)
            };
            let b = [x0, x0 + w, mid - 8.0 * px_y, mid + 8.0 * px_y];
            if boxes.iter().any(|o| b[0] < o[1] && o[0] < b[1] && b[2] < o[3] && o[2] < b[3]) {
                continue;
            }
            boxes.push(b);
            chart.draw_series(std::iter::once(Text::new(short, at, style))).map_err(|e| e.to_string())?;
        }
        summary.labelled = boxes.len();

        let hline = |y: f64| vec![(0.0, y), (steps as f64, y)];
        // The limit holds per buffer, from its start: drawn under the boundaries it often meets.
        let limit_lines: Vec<u64> = match limit_shown {
            Some(l) => bases.iter().map(|&b| b + l).filter(|&y| (y as f64) <= top).collect(),
            None => Vec::new(),
        };
        for &y in &limit_lines {
            chart.draw_series(LineSeries::new(hline(y as f64), LIMIT.stroke_width(3))).map_err(|e| e.to_string())?;
        }
        summary.limit_lines = limit_lines.len();
        for (b, &base) in bases.iter().enumerate() {
            let end = base + p.buffers[b];
            for y in [base, end] {
                if y > 0 {
                    chart
                        .draw_series(LineSeries::new(hline(y as f64), BOUNDARY.stroke_width(1)))
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        chart
            .draw_series(LineSeries::new(hline(lower as f64), LOWER_BOUND.stroke_width(2)))
            .map_err(|e| e.to_string())?;

        // The legend and the numbers, beside the plot.
        let side = side.margin(60, 10, 10, 10);
        let text = TextStyle::from(("sans-serif", 14).into_font()).color(&BLACK);
        let mut y = 0i32;
        let line = |s: String, y: &mut i32| -> Result<(), String> {
            side.draw(&Text::new(s, (0, *y), text.clone())).map_err(|e| e.to_string())?;
            *y += 20;
            Ok(())
        };
        line(format!("arena: {} ({arena} B)", human_bytes(arena as f64)), &mut y)?;
        line(format!("lower bound: {} ({lower} B)", human_bytes(lower as f64)), &mut y)?;
        let ratio = if lower == 0 { 1.0 } else { arena as f64 / lower as f64 };
        line(format!("arena / lower bound: {ratio:.4}"), &mut y)?;
        line(format!("buffers: {}, alignment {} B", p.buffers.len(), p.alignment), &mut y)?;
        match limit {
            Some(l) if limit_shown.is_some() => {
                line(format!("buffer limit: {} per buffer", human_bytes(l as f64)), &mut y)?
            }
            Some(l) => line(format!("buffer limit: {} (off the chart)", human_bytes(l as f64)), &mut y)?,
            None => line("buffer limit: none".into(), &mut y)?,
        }
        line(format!("{} values over {} steps", placed.len(), p.steps.len()), &mut y)?;
        y += 12;
        let mut kinds: Vec<TensorKind> = placed.iter().filter(|pl| !is_tiny(pl)).map(|pl| pl.kind).collect();
        kinds.sort();
        kinds.dedup();
        let mut swatches: Vec<(RGBColor, String)> = kinds.iter().map(|k| (k.color(), k.label().to_string())).collect();
        if summary.groups > 0 {
            swatches
                .push((GROUP, format!("{} values < {} (grouped)", summary.grouped, human_bytes(tiny_below as f64))));
        }
        for (color, label) in &swatches {
            side.draw(&Rectangle::new([(0, y), (24, y + 14)], color.mix(0.8).filled())).map_err(|e| e.to_string())?;
            side.draw(&Text::new(label.clone(), (32, y), text.clone())).map_err(|e| e.to_string())?;
            y += 22;
        }
        summary.swatches = swatches.len();
        let mut lines: Vec<(RGBColor, u32, &str)> =
            vec![(LOWER_BOUND, 2, "lower bound"), (BOUNDARY, 1, "buffer boundary")];
        if limit_shown.is_some() {
            lines.push((LIMIT, 3, "buffer start + limit"));
        }
        for (color, width, label) in lines {
            side.draw(&PathElement::new(vec![(0, y + 7), (24, y + 7)], color.stroke_width(width)))
                .map_err(|e| e.to_string())?;
            side.draw(&Text::new(label, (32, y), text.clone())).map_err(|e| e.to_string())?;
            y += 22;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok((svg, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_names() {
        for (name, kind) in [
            ("logits.part0", TensorKind::SplitPiece),
            ("model.transformer.wte.weight.cols0..256", TensorKind::SplitPiece),
            ("present.0.key", TensorKind::KvCache),
            ("past_key_values.1.value", TensorKind::KvCache),
            ("/transformer/h.0/attn/MatMul_output_0", TensorKind::Activation),
            ("x.partial", TensorKind::Activation),
            ("y.cols", TensorKind::Activation),
        ] {
            assert_eq!(TensorKind::of(name), kind, "{name}");
        }
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(300.0 * 1048576.0), "300 MiB");
    }
}
