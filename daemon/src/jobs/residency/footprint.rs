//! Footprints: memory counted in two places at once, the host's RAM and the accelerator's.
//!
//! A model on the CPU takes RAM only; on a GPU its weights and its jobs' working memory sit in
//! VRAM while ONNX Runtime keeps a smaller share in RAM. Residency keeps a budget for each and a
//! model or job fits only when it fits in both, so every sum, difference and comparison it makes
//! goes through [`Footprint`], component by component. On a CPU daemon the device side is
//! always 0 against a device budget of 0, and everything reads as before.

use std::fmt;
use std::ops::{Add, AddAssign};

use easel_proto::units::human_bytes;

/// Bytes in host memory and on the device (0 on a CPU daemon).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    pub host: u64,
    pub device: u64,
}

/// Which of the two memories something is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    Host,
    Device,
}

impl Footprint {
    pub const ZERO: Footprint = Footprint { host: 0, device: 0 };

    pub const fn host(bytes: u64) -> Self {
        Self { host: bytes, device: 0 }
    }

    pub const fn device(bytes: u64) -> Self {
        Self { host: 0, device: bytes }
    }

    pub fn get(self, memory: Memory) -> u64 {
        match memory {
            Memory::Host => self.host,
            Memory::Device => self.device,
        }
    }

    /// Applies `f` to each memory's pair of values.
    pub fn zip(self, other: Footprint, f: impl Fn(u64, u64) -> u64) -> Footprint {
        Footprint {
            host: f(self.host, other.host),
            device: f(self.device, other.device),
        }
    }

    pub fn saturating_sub(self, other: Footprint) -> Footprint {
        self.zip(other, u64::saturating_sub)
    }

    pub fn max(self, other: Footprint) -> Footprint {
        self.zip(other, u64::max)
    }

    pub fn min(self, other: Footprint) -> Footprint {
        self.zip(other, u64::min)
    }

    /// The first memory in which `self` does not fit in `budget` (host first), if any.
    pub fn exceeds(self, budget: Footprint) -> Option<Memory> {
        if self.host > budget.host {
            Some(Memory::Host)
        } else if self.device > budget.device {
            Some(Memory::Device)
        } else {
            None
        }
    }

    pub fn fits_in(self, budget: Footprint) -> bool {
        self.exceeds(budget).is_none()
    }

    pub fn is_zero(self) -> bool {
        self == Footprint::ZERO
    }
}

impl Add for Footprint {
    type Output = Footprint;
    fn add(self, other: Footprint) -> Footprint {
        self.zip(other, u64::saturating_add)
    }
}

impl AddAssign for Footprint {
    fn add_assign(&mut self, other: Footprint) {
        *self = *self + other;
    }
}

impl std::iter::Sum for Footprint {
    fn sum<I: Iterator<Item = Footprint>>(iter: I) -> Footprint {
        iter.fold(Footprint::ZERO, Add::add)
    }
}

impl fmt::Display for Footprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.device == 0 {
            write!(f, "{}", human_bytes(self.host))
        } else {
            write!(f, "{} RAM + {} VRAM", human_bytes(self.host), human_bytes(self.device))
        }
    }
}

impl Memory {
    /// How this memory's budget is named in messages.
    pub fn budget_name(self) -> &'static str {
        match self {
            Memory::Host => "memory budget",
            Memory::Device => "VRAM budget (the GPU's memory)",
        }
    }

    /// The setting that sizes this memory's budget.
    pub fn setting(self) -> &'static str {
        match self {
            Memory::Host => "memory_budget (EASEL_MEMORY_BUDGET)",
            Memory::Device => "vram_budget (EASEL_VRAM_BUDGET)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_comparisons_go_memory_by_memory() {
        let model = Footprint { host: 2, device: 10 };
        let budget = Footprint { host: 100, device: 12 };
        assert!(model.fits_in(budget));
        assert_eq!((model + model).exceeds(budget), Some(Memory::Device));
        assert_eq!(Footprint::host(101).exceeds(budget), Some(Memory::Host));
        assert_eq!(
            [model, Footprint::host(3)].into_iter().sum::<Footprint>(),
            Footprint { host: 5, device: 10 }
        );
        assert_eq!(model.saturating_sub(Footprint::device(20)), Footprint::host(2));
        // A CPU daemon's device side is 0 against a budget of 0: it always fits.
        assert!(Footprint::host(5).fits_in(Footprint::host(5)));
        assert_eq!(Footprint::host(1 << 30).to_string(), "1.0 GiB");
        assert_eq!(model.max(Footprint::host(7)), Footprint { host: 7, device: 10 });
    }
}
