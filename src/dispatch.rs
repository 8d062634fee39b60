//! CPU feature detection, once per process, and the choice of kernel tier.
//!
//! `FASTXENT_SIMD=scalar|avx2|avx512|neon` caps the tier (it can lower it, never raise it past what
//! the CPU supports), so the test suite can cover every tier on one machine.

use std::sync::OnceLock;

use half::{bf16, f16};

use crate::kernels::{scalar, RowKernels, StoredKernels};

/// A SIMD tier, from the portable baseline up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    Scalar,
    /// aarch64 (every aarch64 CPU has NEON).
    Neon,
    Avx2,
    Avx512,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Scalar => "scalar",
            Tier::Neon => "neon",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
        }
    }

    fn parse(s: &str) -> Option<Tier> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "baseline" | "portable" => Some(Tier::Scalar),
            "neon" => Some(Tier::Neon),
            "avx2" => Some(Tier::Avx2),
            "avx512" | "avx512f" => Some(Tier::Avx512),
            _ => None,
        }
    }
}

/// The best tier this CPU supports.
pub fn detected_tier() -> Tier {
    static DETECTED: OnceLock<Tier> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Tier::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Tier::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            return Tier::Neon;
        }
        #[allow(unreachable_code)]
        Tier::Scalar
    })
}

/// Every tier this CPU can run, from the baseline up.
pub fn supported_tiers() -> Vec<Tier> {
    let arch: &[Tier] = if cfg!(target_arch = "aarch64") { &[Tier::Neon] } else { &[Tier::Avx2, Tier::Avx512] };
    std::iter::once(Tier::Scalar).chain(arch.iter().copied()).filter(|&t| t <= detected_tier()).collect()
}

/// The tier in use: the detected one, lowered by `FASTXENT_SIMD` if set (read once).
pub fn tier() -> Tier {
    static CHOSEN: OnceLock<Tier> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let best = detected_tier();
        match std::env::var("FASTXENT_SIMD").ok().as_deref().and_then(Tier::parse) {
            // The best tier this CPU has at or below the cap.
            Some(cap) => supported_tiers().into_iter().filter(|&t| t <= cap).max().unwrap_or(Tier::Scalar),
            None => best,
        }
    })
}

pub(crate) fn kernels_f32() -> &'static RowKernels<f32> {
    match tier() {
        // `tier()` reports a tier only where the CPU has its features: the only condition
        // under which these tables may be used.
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512 => &crate::kernels::x86::AVX512_F32,
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2 => &crate::kernels::x86::AVX2_F32,
        #[cfg(target_arch = "aarch64")]
        Tier::Neon => &crate::kernels::neon::NEON_F32,
        _ => &scalar::F32,
    }
}

/// The kernels over float16 rows as stored, where the tier has them.
pub(crate) fn stored_f16() -> Option<&'static StoredKernels<f16, f32>> {
    match tier() {
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512 => Some(&crate::kernels::x86::AVX512_F16),
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2 if std::arch::is_x86_feature_detected!("f16c") => Some(&crate::kernels::x86::AVX2_F16),
        _ => None,
    }
}

/// The kernels over bfloat16 rows as stored, where the tier has them.
pub(crate) fn stored_bf16() -> Option<&'static StoredKernels<bf16, f32>> {
    match tier() {
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512 => Some(&crate::kernels::x86::AVX512_BF16),
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2 => Some(&crate::kernels::x86::AVX2_BF16),
        _ => None,
    }
}

pub(crate) fn kernels_f64() -> &'static RowKernels<f64> {
    match tier() {
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512 => &crate::kernels::x86::AVX512_F64,
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2 => &crate::kernels::x86::AVX2_F64,
        #[cfg(target_arch = "aarch64")]
        Tier::Neon => &crate::kernels::neon::NEON_F64,
        _ => &scalar::F64,
    }
}
