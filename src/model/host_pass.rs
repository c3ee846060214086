//! The decoder layers on the CPU over plain `f32` slices: norms, our kernels, RoPE, the cache
//! write, attention and the MLP on buffers allocated once per pass.
//!
//! Why: through candle tensors a layer is some twenty small operations (reshapes, copies,
//! elementwise ops), each allocating its output and some handing work to the thread pool. On
//! prompt chunks that was about a quarter of the time (1B Q4_K_M prefill went from ~220 to ~290
//! tok/s with this pass); here each step is a loop over the rows it touches.
//!
//! The math is candle's, operation for operation (the same formulas, rounded at the same
//! points), so this path and the tensor path in [`super::llama`] agree to float rounding; the
//! tensor path stays for GPUs, F16 matrices and candle's own kernels.

use super::attention::{self, AttentionShape};
use super::config::{LlamaConfig, RopeStyle};
use super::kernels::{Isa, QMatrix};
use super::kv_cache::{KvCache, LayerKv};
use super::parallel;

/// A projection on our kernels, with the bias some families add.
#[derive(Clone, Copy)]
pub(super) struct Affine<'a> {
    pub matrix: &'a QMatrix,
    pub bias: Option<&'a [f32]>,
}

/// A norm's weights on the host.
#[derive(Clone, Copy)]
pub(super) enum NormView<'a> {
    Rms(&'a [f32]),
    Layer { weight: &'a [f32], bias: &'a [f32] },
}

/// The feed-forward block: `down(act(gate(x)) * up(x))`, or `down(gelu(up(x)))` without a gate.
#[derive(Clone, Copy)]
pub(super) enum Mlp<'a> {
    Gated {
        gate: Affine<'a>,
        up: Affine<'a>,
        activation: fn(f32) -> f32,
    },
    Gelu {
        up: Affine<'a>,
    },
}

/// One layer as this pass reads it.
pub(super) struct LayerView<'a> {
    pub attention_norm: NormView<'a>,
    pub q: Affine<'a>,
    pub k: Affine<'a>,
    pub v: Affine<'a>,
    pub output: Affine<'a>,
    pub ffn_norm: NormView<'a>,
    pub mlp: Mlp<'a>,
    pub down: Affine<'a>,
}

/// The RoPE rotations of positions `0..cos.len() / half`, `[position][half]` each, where `half`
/// is half the rotated dimensions of a head.
pub(super) struct Rope {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub half: usize,
    pub style: RopeStyle,
}

impl Rope {
    /// The tables for `positions` positions of this model.
    pub fn new(config: &LlamaConfig, positions: usize) -> Self {
        let half = config.rope_dimension_count / 2;
        let base = f64::from(config.rope_freq_base);
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for position in 0..positions {
            for i in 0..half {
                let theta = base.powf(-2.0 * i as f64 / config.rope_dimension_count as f64);
                let angle = position as f64 * theta;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Self {
            cos,
            sin,
            half,
            style: config.family.rope_style(),
        }
    }

    /// Rotates every head (`head_dim` values each) of `row`, a token at `position`.
    fn rotate(&self, row: &mut [f32], head_dim: usize, position: usize) {
        let at = position * self.half;
        let (cos, sin) = (&self.cos[at..at + self.half], &self.sin[at..at + self.half]);
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..self.half {
                let (a, b) = match self.style {
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    RopeStyle::Neox => (i, i + self.half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }
}

/// Below this many values a row-wise step runs on the calling thread.
const PARALLEL_VALUES: usize = 1 << 16;

/// Calls `f(row index, row)` for each `width`-value row of `data`, in parallel when large.
fn each_row(data: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if data.len() < PARALLEL_VALUES {
        data.chunks_exact_mut(width)
            .enumerate()
            .for_each(|(i, row)| f(i, row));
    } else {
        let mut rows: Vec<&mut [f32]> = data.chunks_exact_mut(width).collect();
        parallel::for_each_mut(&mut rows, || (), |_, i, row| f(i, row));
    }
}

/// RMSNorm of each row of `x` into `out`, as candle computes it: `x / sqrt(mean(x²) + eps) · w`.
fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    each_row(out, width, |i, out| {
        let row = &x[i * width..(i + 1) * width];
        let sum2: f32 = row.iter().map(|v| v * v).sum();
        let m = (sum2 / width as f32 + eps).sqrt();
        for ((o, &v), &w) in out.iter_mut().zip(row).zip(weight) {
            *o = v / m * w;
        }
    });
}

/// LayerNorm of each row of `x` into `out`, as candle computes it (variance as E[x²] − E[x]²).
fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    each_row(out, width, |i, out| {
        let row = &x[i * width..(i + 1) * width];
        let (mut sum, mut sum2) = (0f32, 0f32);
        for &v in row {
            sum += v;
            sum2 += v * v;
        }
        let mean = sum / width as f32;
        let inverse = (sum2 / width as f32 - mean * mean + eps).sqrt().recip();
        for (((o, &v), &w), &b) in out.iter_mut().zip(row).zip(weight).zip(bias) {
            *o = (v - mean) * inverse * w + b;
        }
    });
}

fn normalize(x: &[f32], norm: NormView, eps: f32, out: &mut [f32]) {
    match norm {
        NormView::Rms(weight) => rms_norm(x, weight, eps, out),
        NormView::Layer { weight, bias } => layer_norm(x, weight, bias, eps, out),
    }
}

/// candle's tanh approximation of GELU.
pub(super) fn gelu(v: f32) -> f32 {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    0.5 * v * (1.0 + (SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v)).tanh())
}

pub(super) fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

/// The buffers of one pass, sized for its rows.
struct Scratch {
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Queries `[head][row][head_dim]` when there is more than one row.
    queries: Vec<f32>,
    attended: Vec<f32>,
    projected: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
}

impl Scratch {
    fn new(config: &LlamaConfig, rows: usize) -> Self {
        let kv_width = config.head_count_kv * config.head_dim;
        let q_width = config.query_width();
        let zeros = |n: usize| vec![0f32; rows * n];
        Self {
            normed: zeros(config.embedding_length),
            q: zeros(q_width),
            k: zeros(kv_width),
            v: zeros(kv_width),
            queries: if rows > 1 { zeros(q_width) } else { Vec::new() },
            attended: zeros(q_width),
            projected: zeros(config.embedding_length),
            gate: zeros(config.feed_forward_length),
            up: zeros(config.feed_forward_length),
        }
    }
}

/// `outs[i] = x · W_iᵀ + b_i` for each projection, in one pass of the kernels.
fn project(affines: &[Affine], x: &[f32], outs: &mut [&mut [f32]]) {
    let matrices: Vec<&QMatrix> = affines.iter().map(|a| a.matrix).collect();
    QMatrix::matmul_many(Isa::detect(), &matrices, x, outs);
    for (affine, out) in affines.iter().zip(outs.iter_mut()) {
        if let Some(bias) = affine.bias {
            each_row(out, bias.len(), |_, row| {
                for (y, b) in row.iter_mut().zip(bias) {
                    *y += b;
                }
            });
        }
    }
}

/// `x += y`, row by row.
fn add_into(x: &mut [f32], y: &[f32], width: usize) {
    each_row(x, width, |i, row| {
        for (a, b) in row.iter_mut().zip(&y[i * width..(i + 1) * width]) {
            *a += b;
        }
    });
}

/// Runs every layer over `x` (`[rows][embedding_length]`, the tokens at positions `start..`),
/// writing their keys and values into `cache`, which must lie on the host.
pub(super) fn run_layers(
    config: &LlamaConfig,
    layers: &[LayerView],
    rope: &Rope,
    x: &mut [f32],
    start: usize,
    cache: &mut KvCache,
) -> candle_core::Result<()> {
    let width = config.embedding_length;
    let rows = x.len() / width;
    let (heads, kv_heads, head_dim) = (config.head_count, config.head_count_kv, config.head_dim);
    let (q_width, kv_width) = (config.query_width(), kv_heads * head_dim);
    if rows == 0 || x.len() != rows * width || (start + rows) * rope.half > rope.cos.len() {
        candle_core::bail!("host pass of {} values at position {start}", x.len());
    }
    let eps = config.rms_norm_eps as f32;
    let mut s = Scratch::new(config, rows);
    for (index, layer) in layers.iter().enumerate() {
        normalize(x, layer.attention_norm, eps, &mut s.normed);
        project(
            &[layer.q, layer.k, layer.v],
            &s.normed,
            &mut [&mut s.q, &mut s.k, &mut s.v],
        );
        each_row(&mut s.q, q_width, |i, row| {
            rope.rotate(row, head_dim, start + i)
        });
        each_row(&mut s.k, kv_width, |i, row| {
            rope.rotate(row, head_dim, start + i)
        });
        cache.write_rows(index, start, &s.k, &s.v)?;

        let shape = AttentionShape {
            kv_heads,
            group: heads / kv_heads,
            head_dim,
            start,
            seq: rows,
            capacity: cache.capacity(),
        };
        // The kernel takes queries head-major; one row already is.
        let queries = if rows == 1 {
            &s.q
        } else {
            for (i, row) in s.q.chunks_exact(q_width).enumerate() {
                for (h, head) in row.chunks_exact(head_dim).enumerate() {
                    let at = (h * rows + i) * head_dim;
                    s.queries[at..at + head_dim].copy_from_slice(head);
                }
            }
            &s.queries
        };
        match cache.layer(index, start + rows)? {
            LayerKv::F16 { keys, values } => {
                attention::attend(queries, keys, values, shape, &mut s.attended)
            }
            LayerKv::F32 { keys, values } => {
                attention::attend(queries, keys, values, shape, &mut s.attended)
            }
            LayerKv::Tensors { .. } => candle_core::bail!("the host pass needs a host cache"),
        }
        project(&[layer.output], &s.attended, &mut [&mut s.projected]);
        add_into(x, &s.projected, width);

        normalize(x, layer.ffn_norm, eps, &mut s.normed);
        let hidden_width = config.feed_forward_length;
        let hidden = match layer.mlp {
            Mlp::Gated {
                gate,
                up,
                activation,
            } => {
                project(&[gate, up], &s.normed, &mut [&mut s.gate, &mut s.up]);
                let up = &s.up;
                each_row(&mut s.gate, hidden_width, |i, row| {
                    let up = &up[i * hidden_width..(i + 1) * hidden_width];
                    for (g, u) in row.iter_mut().zip(up) {
                        *g = activation(*g) * u;
                    }
                });
                &s.gate
            }
            Mlp::Gelu { up } => {
                project(&[up], &s.normed, &mut [&mut s.up]);
                each_row(&mut s.up, hidden_width, |_, row| {
                    row.iter_mut().for_each(|v| *v = gelu(*v))
                });
                &s.up
            }
        };
        project(&[layer.down], hidden, &mut [&mut s.projected]);
        add_into(x, &s.projected, width);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::fixtures::SplitMix64;
    use crate::test_support::max_difference;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| rng.symmetric() * 3.0).collect()
    }

    #[test]
    fn rms_norm_equals_candles_for_one_row_and_for_many() {
        for rows in [1, 40] {
            let (width, eps) = (96, 1e-5);
            let x = random(rows * width, 1);
            let weight = random(width, 2);
            let mut ours = vec![0.0; rows * width];
            rms_norm(&x, &weight, eps, &mut ours);
            let theirs = candle_nn::ops::rms_norm(
                &Tensor::from_vec(x, (rows, width), &Device::Cpu).unwrap(),
                &Tensor::new(weight.as_slice(), &Device::Cpu).unwrap(),
                eps,
            )
            .unwrap();
            let theirs: Vec<f32> = theirs.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(ours, theirs, "{rows} rows");
        }
    }

    #[test]
    fn layer_norm_equals_candles() {
        let (rows, width, eps) = (40, 96, 1e-5);
        let x = random(rows * width, 7);
        let (weight, bias) = (random(width, 8), random(width, 9));
        let mut ours = vec![0.0; rows * width];
        layer_norm(&x, &weight, &bias, eps, &mut ours);
        let dev = &Device::Cpu;
        let theirs = candle_nn::ops::layer_norm(
            &Tensor::from_vec(x, (rows, width), dev).unwrap(),
            &Tensor::new(weight.as_slice(), dev).unwrap(),
            &Tensor::new(bias.as_slice(), dev).unwrap(),
            eps,
        )
        .unwrap();
        let theirs: Vec<f32> = theirs.flatten_all().unwrap().to_vec1().unwrap();
        assert!(max_difference(&ours, &theirs) < 1e-5);
    }

    #[test]
    fn activations_equal_candles() {
        let x = random(1000, 3);
        let tensor = Tensor::new(x.as_slice(), &Device::Cpu).unwrap();
        let silu_candle: Vec<f32> = tensor.silu().unwrap().to_vec1().unwrap();
        let gelu_candle: Vec<f32> = tensor.gelu().unwrap().to_vec1().unwrap();
        assert_eq!(x.iter().map(|&v| silu(v)).collect::<Vec<_>>(), silu_candle);
        assert!(
            max_difference(
                &x.iter().map(|&v| gelu(v)).collect::<Vec<_>>(),
                &gelu_candle
            ) < 1e-6
        );
    }

    /// Both RoPE styles, a partial rotation included, against candle's on `[1, heads, seq, dim]`.
    #[test]
    fn rope_equals_candles_in_both_styles() {
        let (heads, seq, head_dim, start) = (3, 5, 16, 7);
        for (style, rope_dims) in [
            (RopeStyle::Interleaved, 16),
            (RopeStyle::Neox, 16),
            (RopeStyle::Neox, 8),
        ] {
            let rope = Rope {
                cos: random(32 * rope_dims / 2, 4),
                sin: random(32 * rope_dims / 2, 5),
                half: rope_dims / 2,
                style,
            };
            // Ours: rows `[seq][heads][head_dim]`.
            let x = random(seq * heads * head_dim, 6);
            let mut ours = x.clone();
            for (i, row) in ours.chunks_exact_mut(heads * head_dim).enumerate() {
                rope.rotate(row, head_dim, start + i);
            }
            // candle's: `[1, heads, seq, head_dim]`, only the first `rope_dims` rotated.
            let dev = &Device::Cpu;
            let t = Tensor::from_vec(x, (1, seq, heads, head_dim), dev)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap();
            let table = |v: &[f32]| {
                Tensor::from_vec(v.to_vec(), (32, rope_dims / 2), dev)
                    .unwrap()
                    .narrow(0, start, seq)
                    .unwrap()
            };
            let (cos, sin) = (table(&rope.cos), table(&rope.sin));
            let rotate = match style {
                RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i,
                RopeStyle::Neox => candle_nn::rotary_emb::rope,
            };
            let part = t.narrow(3, 0, rope_dims).unwrap().contiguous().unwrap();
            let rest = t.narrow(3, rope_dims, head_dim - rope_dims).unwrap();
            let theirs = Tensor::cat(&[&rotate(&part, &cos, &sin).unwrap(), &rest], 3)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(ours, theirs, "{style:?}, {rope_dims} of {head_dim} rotated");
        }
    }
}
