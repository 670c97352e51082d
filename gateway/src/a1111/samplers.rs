//! AUTOMATIC1111's sampler and schedule names, and which easel sampler each one is.
//!
//! Since A1111 1.9 a sampler ("DPM++ 2M") and its noise schedule ("Karras") are two fields;
//! older clients send the combined name ("DPM++ 2M Karras"). Both resolve here. A schedule
//! easel does not have for the chosen sampler is refused rather than silently ignored: the
//! picture would not be the one asked for.

use crate::error::ApiError;

/// One sampler as `/sdapi/v1/samplers` lists it.
#[derive(Debug, Clone, Copy)]
pub struct Sampler {
    /// A1111's display name, what clients send as `sampler_name`.
    pub name: &'static str,
    /// easel's name for it (the gRPC `sampler` field).
    pub easel: &'static str,
    /// A1111's older k-diffusion names.
    pub aliases: &'static [&'static str],
}

pub const SAMPLERS: &[Sampler] = &[
    Sampler {
        name: "DPM++ 2M",
        easel: "dpmpp_2m",
        aliases: &["k_dpmpp_2m"],
    },
    Sampler {
        name: "Euler a",
        easel: "euler_a",
        aliases: &["k_euler_a", "k_euler_ancestral"],
    },
    Sampler {
        name: "Euler",
        easel: "euler",
        aliases: &["k_euler"],
    },
    Sampler {
        name: "Heun",
        easel: "heun",
        aliases: &["k_heun"],
    },
    Sampler {
        name: "LCM",
        easel: "lcm",
        aliases: &["k_lcm"],
    },
    Sampler {
        name: "DDIM",
        easel: "ddim",
        aliases: &["ddim"],
    },
    Sampler {
        name: "PLMS",
        easel: "pndm",
        aliases: &["plms"],
    },
];

/// The schedules `/sdapi/v1/schedulers` lists: (name, label).
pub const SCHEDULERS: &[(&str, &str)] = &[("automatic", "Automatic"), ("karras", "Karras")];

/// The easel sampler for A1111's `sampler_name` (or `sampler_index`) and `scheduler`.
/// `None`: neither was given, the model's own sampler runs.
pub fn resolve(sampler: Option<&str>, scheduler: Option<&str>) -> Result<Option<&'static str>, ApiError> {
    let sampler = sampler.map(str::trim).filter(|s| !s.is_empty());
    let karras = match scheduler.map(str::trim).filter(|s| !s.is_empty()) {
        None => false,
        Some(s) if s.eq_ignore_ascii_case("automatic") => false,
        Some(s) if s.eq_ignore_ascii_case("karras") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "scheduler",
                format!("easel has no `{other}` schedule; use Automatic (the sampler's own) or Karras (with DPM++ 2M)"),
            ));
        }
    };
    let Some(name) = sampler else {
        return if karras { Ok(Some("dpmpp_2m_karras")) } else { Ok(None) };
    };
    // The combined pre-1.9 names, and easel's own names, are accepted as well.
    let (base, combined_karras) = match name.strip_suffix(" Karras") {
        Some(base) => (base, true),
        None if name.eq_ignore_ascii_case("dpmpp_2m_karras") => ("dpmpp_2m", true),
        None => (name, false),
    };
    let found = SAMPLERS.iter().find(|s| {
        s.name.eq_ignore_ascii_case(base) || s.easel == base || s.aliases.iter().any(|a| a.eq_ignore_ascii_case(base))
    });
    let Some(found) = found else {
        let names: Vec<&str> = SAMPLERS.iter().map(|s| s.name).collect();
        return Err(ApiError::invalid(
            "sampler_name",
            format!("easel has no sampler named `{name}`; it has {}", names.join(", ")),
        ));
    };
    if karras || combined_karras {
        if found.easel != "dpmpp_2m" {
            return Err(ApiError::invalid(
                "scheduler",
                format!(
                    "easel has the Karras schedule only with DPM++ 2M, not with {}; use scheduler Automatic",
                    found.name
                ),
            ));
        }
        return Ok(Some("dpmpp_2m_karras"));
    }
    Ok(Some(found.easel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a1111_names_resolve_to_easels_samplers() {
        assert_eq!(resolve(Some("Euler a"), Some("automatic")).unwrap(), Some("euler_a"));
        assert_eq!(
            resolve(Some("DPM++ 2M"), Some("Karras")).unwrap(),
            Some("dpmpp_2m_karras")
        );
        assert_eq!(resolve(Some("DPM++ 2M Karras"), None).unwrap(), Some("dpmpp_2m_karras"));
        assert_eq!(resolve(Some("k_euler_a"), None).unwrap(), Some("euler_a"));
        assert_eq!(resolve(Some("PLMS"), None).unwrap(), Some("pndm"));
        assert_eq!(resolve(Some("heun"), None).unwrap(), Some("heun"));
        assert_eq!(resolve(None, None).unwrap(), None);
        assert_eq!(resolve(Some(""), Some("")).unwrap(), None);
    }

    #[test]
    fn unknown_samplers_and_schedules_name_what_exists() {
        let error = resolve(Some("DPM++ SDE"), None).unwrap_err();
        assert!(
            error.message.contains("DPM++ SDE") && error.message.contains("Euler a"),
            "{}",
            error.message
        );
        let error = resolve(Some("Euler"), Some("Karras")).unwrap_err();
        assert!(error.message.contains("only with DPM++ 2M"), "{}", error.message);
        assert!(resolve(Some("Euler"), Some("Exponential")).is_err());
    }
}
