//! The spike-aware fast path: when the latest observation is far above what the model expected
//! of it, serve `max(latest, forecast)` at once instead of waiting for the smoothing to catch up.
//!
//! With `r_t` the one-step residuals of the fit (observation minus the model's prediction of it
//! made one step earlier), the latest `r_n` and the `w` residuals before it:
//!
//! ```text
//! σ̂      = 1.4826 · median(|r_i - median(r)|)          i = n-w..n-1 (a robust standard deviation)
//! spike  = r_n > k · σ̂   and   r_n > 0
//! served = max(x_n, forecast)  on a spike, else forecast
//! ```
//!
//! The median absolute deviation is used rather than the standard deviation so that earlier
//! spikes in the window do not widen the band and hide the next one. A perfectly smooth history
//! (σ̂ = 0) counts any rise above the prediction as a spike; serving the latest value there costs
//! nothing, as it is the forecast's own neighbourhood. Fewer than 2 earlier residuals: no spike.
//! The path only ever raises the served value: a sudden drop waits for the smoothing, which is
//! what the HPA's scale-down stabilisation would do anyway.

/// Normal-consistency constant of the MAD (1 / Φ⁻¹(3/4)).
pub const MAD_SCALE: f64 = 1.4826;

/// The band of the fast path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpikeGuard {
    /// Band width in robust standard deviations, > 0.
    pub k: f64,
    /// Residuals the band is computed over (at least 2).
    pub residuals: usize,
}

impl SpikeGuard {
    /// Whether `k` is finite and positive and at least 2 residuals are used.
    pub fn is_valid(&self) -> bool {
        self.k.is_finite() && self.k > 0.0 && self.residuals >= 2
    }

    /// Whether the last of `residuals` (oldest first) is a spike against the ones before it.
    pub fn is_spike(&self, residuals: &[f64]) -> bool {
        let Some((&latest, before)) = residuals.split_last() else {
            return false;
        };
        let window = &before[before.len().saturating_sub(self.residuals)..];
        if window.len() < 2 || latest.is_nan() || latest <= 0.0 {
            return false;
        }
        latest > self.k * MAD_SCALE * mad(window)
    }
}

/// The median absolute deviation of `xs` (not empty, finite).
pub fn mad(xs: &[f64]) -> f64 {
    let m = median(xs.to_vec());
    median(xs.iter().map(|x| (x - m).abs()).collect())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GUARD: SpikeGuard = SpikeGuard {
        k: 4.0,
        residuals: 50,
    };

    /// Noise in [-1, 1], deterministic.
    fn noise(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * 7919) % 200) as f64 / 100.0 - 1.0)
            .collect()
    }

    #[test]
    fn mad_of_known_values() {
        assert_eq!(mad(&[1.0, 2.0, 3.0, 4.0, 100.0]), 1.0);
        assert_eq!(mad(&[5.0, 5.0]), 0.0);
    }

    #[test]
    fn a_jump_well_outside_the_noise_is_a_spike_and_a_small_one_is_not() {
        let mut r = noise(60);
        let sigma = MAD_SCALE * mad(&r[10..]);
        r.push(3.0 * sigma);
        assert!(!GUARD.is_spike(&r), "3σ is inside a 4σ band");
        *r.last_mut().unwrap() = 5.0 * sigma;
        assert!(GUARD.is_spike(&r), "5σ is outside");
    }

    #[test]
    fn drops_are_never_spikes() {
        let mut r = noise(60);
        r.push(-1000.0);
        assert!(!GUARD.is_spike(&r));
    }

    #[test]
    fn earlier_spikes_do_not_hide_the_next() {
        let mut r = noise(60);
        for i in (0..60).step_by(10) {
            r[i] = 500.0;
        }
        r.push(50.0);
        assert!(GUARD.is_spike(&r));
    }

    #[test]
    fn too_little_history_is_no_spike() {
        assert!(!GUARD.is_spike(&[]));
        assert!(!GUARD.is_spike(&[0.0, 100.0]));
        assert!(GUARD.is_spike(&[0.0, 0.0, 100.0]));
    }

    proptest! {
        #[test]
        fn the_band_is_scale_free_and_monotone_in_the_latest(
            r in proptest::collection::vec(-1e3..1e3f64, 1..100),
            c in 0.01..100.0f64,
            more in 0.0..1e3f64,
        ) {
            let scaled: Vec<f64> = r.iter().map(|x| x * c).collect();
            prop_assert_eq!(GUARD.is_spike(&r), GUARD.is_spike(&scaled));
            let mut higher = r.clone();
            *higher.last_mut().unwrap() += more;
            prop_assert!(!GUARD.is_spike(&r) || GUARD.is_spike(&higher));
        }
    }
}
