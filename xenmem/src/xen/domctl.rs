//! Typed configuration of `XEN_DOMCTL_createdomain`.
//!
//! [`CreateDomain`] says what kind of domain to build in terms a caller can
//! check; [`CreateDomain::to_abi`] turns it into the `xen_domctl_createdomain`
//! of the architecture being built (x86 on the host), refusing what the
//! structure cannot say. Xen 4.17 (domctl interface version 0x15) then checks
//! it again (`sanitise_domain_config`, `arch_sanitise_domain_config`,
//! `grant_table_init`).

use core::fmt;

use super::abi;

/// The highest grant-table version a new domain may switch to
/// (`XEN_DOMCTL_GRANT_version`). Every domain starts with version 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum GrantVersion {
    /// Version 1 only (Arm supports nothing else).
    V1,
    /// Version 2 allowed (x86).
    V2,
}

impl GrantVersion {
    /// The number.
    pub const fn get(self) -> u32 {
        match self {
            GrantVersion::V1 => 1,
            GrantVersion::V2 => 2,
        }
    }
}

/// The architecture-specific part of a new domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ArchConfig {
    /// x86: which devices Xen emulates. For an HVM domU Xen 4.17 accepts
    /// exactly [`abi::x86_emu::LAPIC`] (PVH) or everything but vPCI (HVM).
    X86 {
        /// `XEN_X86_EMU_*`.
        emulation_flags: u32,
        /// `XEN_X86_MSR_RELAXED` or 0.
        misc_flags: u32,
    },
    /// Arm: the virtual interrupt controller.
    Arm {
        /// `XEN_DOMCTL_CONFIG_GIC_*`; `NATIVE` lets Xen choose (and it
        /// writes its choice back).
        gic_version: u8,
        /// Shared peripheral interrupts to emulate.
        nr_spis: u32,
        /// `XEN_DOMCTL_CONFIG_TEE_*`.
        tee_type: u16,
    },
}

/// What kind of domain `XEN_DOMCTL_createdomain` should build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateDomain {
    /// `XEN_DOMCTL_CDF_*` flags ([`abi::cdf`]).
    pub flags: u32,
    /// vCPUs the domain may have (at least 1; Xen 4.17 allocates them with
    /// `XEN_DOMCTL_max_vcpus`, which a domain that never runs does not need).
    pub max_vcpus: u32,
    /// Highest event-channel port.
    pub max_evtchn_port: u32,
    /// Grant-table frames (`None`: Xen's default, 64; at most that).
    pub max_grant_frames: Option<u32>,
    /// Maptrack frames (`None`: Xen's default, 1024; at most that).
    pub max_maptrack_frames: Option<u32>,
    /// Highest grant-table version.
    pub grant_version: GrantVersion,
    /// The toolstack's handle (a UUID; all zeroes is fine).
    pub handle: [u8; 16],
    /// Architecture-specific part.
    pub arch: ArchConfig,
}

/// Why [`CreateDomain::to_abi`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ConfigError {
    /// The architecture part is for another architecture than this build.
    WrongArch,
    /// A count does not fit the field (the field's name).
    OutOfRange(&'static str),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::WrongArch => {
                write!(f, "the domain's architecture part is not this build's")
            }
            ConfigError::OutOfRange(what) => write!(f, "{what} is out of range"),
        }
    }
}

/// `xl`'s default highest event-channel port (`event_channels`).
pub const DEFAULT_MAX_EVTCHN_PORT: u32 = 1023;
/// Xen's default (and, without `gnttab_max_frames=`, maximum) grant-table
/// frames per domain.
pub const DEFAULT_MAX_GRANT_FRAMES: u32 = 64;
/// Xen's default (and maximum) maptrack frames per domain.
pub const DEFAULT_MAX_MAPTRACK_FRAMES: u32 = 1024;

impl CreateDomain {
    /// An x86 PVH domU that never runs, as a helper: HVM with HAP, one vCPU,
    /// the LAPIC the only emulated device, grant v1, 64 grant frames, 1024
    /// maptrack frames.
    pub const fn x86_pvh_helper() -> Self {
        Self {
            flags: abi::cdf::HVM | abi::cdf::HAP,
            max_vcpus: 1,
            max_evtchn_port: DEFAULT_MAX_EVTCHN_PORT,
            max_grant_frames: Some(DEFAULT_MAX_GRANT_FRAMES),
            max_maptrack_frames: Some(DEFAULT_MAX_MAPTRACK_FRAMES),
            grant_version: GrantVersion::V1,
            handle: [0; 16],
            arch: ArchConfig::X86 {
                emulation_flags: abi::x86_emu::LAPIC,
                misc_flags: 0,
            },
        }
    }

    /// An Arm domU helper: HVM and HAP (both required on Arm), one vCPU, the
    /// host's GIC version, no SPIs, no TEE, grant v1.
    pub const fn arm_helper() -> Self {
        Self {
            arch: ArchConfig::Arm {
                gic_version: abi::arm_gic::NATIVE,
                nr_spis: 0,
                tee_type: abi::arm_gic::TEE_NONE,
            },
            ..Self::x86_pvh_helper()
        }
    }

    /// The helper for the architecture being built.
    pub const fn native_helper() -> Self {
        if cfg!(target_arch = "aarch64") {
            Self::arm_helper()
        } else {
            Self::x86_pvh_helper()
        }
    }

    /// The `xen_domctl_createdomain` of this build's architecture.
    pub fn to_abi(&self) -> Result<abi::DomctlCreateDomain, ConfigError> {
        let frames = |v: Option<u32>, what| match v {
            None => Ok(-1),
            Some(n) => i32::try_from(n).map_err(|_| ConfigError::OutOfRange(what)),
        };
        Ok(abi::DomctlCreateDomain {
            ssidref: 0,
            handle: self.handle,
            flags: self.flags,
            iommu_opts: 0,
            max_vcpus: self.max_vcpus,
            max_evtchn_port: self.max_evtchn_port,
            max_grant_frames: frames(self.max_grant_frames, "max_grant_frames")?,
            max_maptrack_frames: frames(self.max_maptrack_frames, "max_maptrack_frames")?,
            grant_opts: abi::xen_domctl_grant_version(self.grant_version.get()),
            vmtrace_size: 0,
            cpupool_id: 0,
            arch: arch_abi(self.arch)?,
        })
    }
}

#[cfg(not(target_arch = "aarch64"))]
fn arch_abi(a: ArchConfig) -> Result<abi::ArchDomainConfig, ConfigError> {
    match a {
        ArchConfig::X86 {
            emulation_flags,
            misc_flags,
        } => Ok(abi::X86ArchDomainConfig {
            emulation_flags,
            misc_flags,
        }),
        ArchConfig::Arm { .. } => Err(ConfigError::WrongArch),
    }
}

#[cfg(target_arch = "aarch64")]
fn arch_abi(a: ArchConfig) -> Result<abi::ArchDomainConfig, ConfigError> {
    match a {
        ArchConfig::Arm {
            gic_version,
            nr_spis,
            tee_type,
        } => Ok(abi::ArmArchDomainConfig {
            gic_version,
            pad: 0,
            tee_type,
            nr_spis,
            clock_frequency: 0,
        }),
        ArchConfig::X86 { .. } => Err(ConfigError::WrongArch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_is_what_xen_accepts() {
        let c = CreateDomain::native_helper().to_abi().unwrap();
        assert_eq!(c.flags, abi::cdf::HVM | abi::cdf::HAP);
        assert_eq!(c.max_vcpus, 1);
        assert_eq!((c.max_grant_frames, c.max_maptrack_frames), (64, 1024));
        assert_eq!(c.grant_opts, 1);
        assert_eq!(
            (c.iommu_opts, c.vmtrace_size, c.cpupool_id, c.ssidref),
            (0, 0, 0, 0)
        );
        #[cfg(not(target_arch = "aarch64"))]
        assert_eq!(c.arch.emulation_flags, abi::x86_emu::LAPIC);
    }

    #[test]
    fn refusals() {
        let other = if cfg!(target_arch = "aarch64") {
            CreateDomain::x86_pvh_helper()
        } else {
            CreateDomain::arm_helper()
        };
        assert_eq!(other.to_abi(), Err(ConfigError::WrongArch));
        let big = CreateDomain {
            max_grant_frames: Some(u32::MAX),
            ..CreateDomain::native_helper()
        };
        assert_eq!(
            big.to_abi(),
            Err(ConfigError::OutOfRange("max_grant_frames"))
        );
        let dflt = CreateDomain {
            max_grant_frames: None,
            max_maptrack_frames: None,
            grant_version: GrantVersion::V2,
            ..CreateDomain::native_helper()
        }
        .to_abi()
        .unwrap();
        assert_eq!(
            (
                dflt.max_grant_frames,
                dflt.max_maptrack_frames,
                dflt.grant_opts
            ),
            (-1, -1, 2)
        );
    }
}
