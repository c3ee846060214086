//! Choosing the next token from logits: greedy by default, or seeded sampling with temperature,
//! top-k, top-p and a repetition penalty. Pure and deterministic for a given seed.

/// How to pick tokens. The default is greedy (temperature 0): deterministic, best for code.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = no limit).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability adds up to `top_p` (1 = no limit).
    pub top_p: f32,
    /// Divide positive logits (multiply negative ones) of recently seen tokens by this (1 = off).
    pub repetition_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repetition_window: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            repetition_penalty: 1.0,
            repetition_window: 64,
            seed: 0,
        }
    }
}

/// A sampler with its own random state (PCG-XSH-RR 64/32, so streams are reproducible across
/// platforms and crate versions).
pub struct Sampler {
    params: SamplingParams,
    state: u64,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let state = params
            .seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        Self { params, state }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token. `recent` holds the tokens seen so far (prompt and output), used by the
    /// repetition penalty. NaN logits are treated as impossible.
    pub fn sample(&mut self, logits: &[f32], recent: &[u32]) -> u32 {
        let mut logits: Vec<f32> = logits
            .iter()
            .map(|&l| if l.is_nan() { f32::NEG_INFINITY } else { l })
            .collect();
        self.apply_repetition_penalty(&mut logits, recent);
        if self.params.temperature <= 0.0 {
            return argmax(&logits);
        }
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / self.params.temperature))
            .collect();
        if candidates.is_empty() {
            return argmax(&logits);
        }
        // Most likely first; ties by id so the order never depends on the sort's stability.
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.params.top_k > 0 {
            candidates.truncate(self.params.top_k);
        }
        let max = candidates[0].1;
        let mut probabilities: Vec<f32> = candidates.iter().map(|(_, l)| (l - max).exp()).collect();
        let total: f32 = probabilities.iter().sum();
        probabilities.iter_mut().for_each(|p| *p /= total);
        if self.params.top_p < 1.0 {
            let mut cumulative = 0.0;
            let keep = probabilities
                .iter()
                .position(|p| {
                    cumulative += p;
                    cumulative >= self.params.top_p
                })
                .map_or(probabilities.len(), |i| i + 1);
            probabilities.truncate(keep);
            candidates.truncate(keep);
        }
        let total: f32 = probabilities.iter().sum();
        let mut target = self.next_unit() * total;
        for (i, p) in probabilities.iter().enumerate() {
            if target < *p {
                return candidates[i].0;
            }
            target -= p;
        }
        candidates[candidates.len() - 1].0
    }

    fn apply_repetition_penalty(&self, logits: &mut [f32], recent: &[u32]) {
        let penalty = self.params.repetition_penalty;
        if penalty == 1.0 || penalty <= 0.0 {
            return;
        }
        let window = &recent[recent.len().saturating_sub(self.params.repetition_window)..];
        let mut seen = std::collections::HashSet::new();
        for &token in window {
            if !seen.insert(token) {
                continue;
            }
            if let Some(logit) = logits.get_mut(token as usize) {
                *logit = if *logit > 0.0 {
                    *logit / penalty
                } else {
                    *logit * penalty
                };
            }
        }
    }

    /// Uniform in [0, 1).
    fn next_unit(&mut self) -> f32 {
        let old = self.state;
        self.state = old
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        let rotation = (old >> 59) as u32;
        let bits = xorshifted.rotate_right(rotation);
        (bits >> 8) as f32 / (1u32 << 24) as f32
    }
}

/// The index of the largest logit; the lowest index wins ties (as llama.cpp's greedy sampler).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &logit) in logits.iter().enumerate() {
        if logit > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f32, seed: u64) -> Sampler {
        Sampler::new(SamplingParams {
            temperature,
            seed,
            ..SamplingParams::default()
        })
    }

    #[test]
    fn greedy_picks_the_first_maximum_and_ignores_nan() {
        let mut greedy = sampler(0.0, 0);
        assert_eq!(greedy.sample(&[0.1, 3.0, 3.0, -1.0], &[]), 1);
        assert_eq!(greedy.sample(&[f32::NAN, 0.5, 0.2], &[]), 1);
    }

    #[test]
    fn the_same_seed_gives_the_same_stream_and_another_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = sampler(1.0, seed);
            (0..40).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_keeps_the_likely_head() {
        let logits = [1.0, 5.0, 2.0, 4.9];
        let mut top1 = Sampler::new(SamplingParams {
            temperature: 2.0,
            top_k: 1,
            ..SamplingParams::default()
        });
        assert!((0..20).all(|_| top1.sample(&logits, &[]) == 1));
        let mut nucleus = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            ..SamplingParams::default()
        });
        assert!(
            (0..50).all(|_| nucleus.sample(&logits, &[]) == 1),
            "token 1 alone has p > 0.5"
        );
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 3,
            ..SamplingParams::default()
        });
        let logits = [0.0, (3.0f32).ln()]; // p = 0.25, 0.75
        let ones = (0..4000).filter(|_| s.sample(&logits, &[]) == 1).count();
        assert!((2800..3200).contains(&ones), "{ones}");
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::default()
        });
        assert_eq!(s.sample(&[1.0, 1.5, -3.0], &[1]), 0);
        assert_eq!(s.sample(&[1.0, 1.5, -3.0], &[]), 1);
    }
}
