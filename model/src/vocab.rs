//! Closed label vocabularies: one enum per label whose
//! values are fixed, each with the exact string that appears on the wire.

macro_rules! vocabulary {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label value as exported.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

vocabulary! {
    /// `source`: where a reading comes from.
    Source {
        Rapl => "rapl", Hwmon => "hwmon", Thermal => "thermal", Ipmi => "ipmi",
        Redfish => "redfish", Nvml => "nvml", Estimated => "estimated", Procfs => "procfs",
        Clock => "clock",
    }
}

vocabulary! {
    /// `domain`: what part of the machine an energy or power zone covers.
    Domain {
        Package => "package", Core => "core", Uncore => "uncore", Dram => "dram", Psys => "psys",
        PsuInput => "psu_input", PsuOutput => "psu_output", Platform => "platform", Soc => "soc",
        Gpu => "gpu", Other => "other",
    }
}

vocabulary! {
    /// `location`: where a temperature is taken.
    Location {
        Inlet => "inlet", Exhaust => "exhaust", Cpu => "cpu", Memory => "memory", Psu => "psu",
        Disk => "disk", Gpu => "gpu", Ambient => "ambient", Other => "other",
    }
}

vocabulary! {
    /// `method`: how the host's power figure is obtained, best first.
    Method {
        BmcDcmi => "bmc_dcmi", BmcRedfish => "bmc_redfish", PsuInput => "psu_input",
        AcpiPowerMeter => "acpi_power_meter", RaplUplift => "rapl_uplift", Model => "model",
    }
}

vocabulary! {
    /// `quality`: whether a figure is measured at the wall or estimated.
    Quality { Measured => "measured", Estimated => "estimated" }
}

vocabulary! {
    /// `reason`: why a sensor read failed or a sample was not used. `parse`: an
    /// answer arrived but is not what the protocol says (garbage, wrong shape);
    /// `io`: the transport failed; `implausible`: a reading that parses but is
    /// physically impossible (outside the bounds of `docs/bmc.md`); `reset`: a
    /// counter seen going backwards (reset by its device).
    Reason {
        Missing => "missing", Permission => "permission", Parse => "parse", Timeout => "timeout",
        Io => "io", Gap => "gap", WrapOverrun => "wrap_overrun", Rejected => "rejected",
        Implausible => "implausible", Reset => "reset",
    }
}

vocabulary! {
    /// `reason` of `domesday_push_errors_total`: why a push request failed and
    /// will be retried. `tls`: the handshake or a certificate was refused (either
    /// side: an untrusted collector certificate, a client certificate missing or
    /// refused); `connect`: no connection (refused, unreachable, name not found)
    /// or the connection broke; `timeout`: no answer in time; `http`: a 429 or 5xx answer.
    PushFailure { Tls => "tls", Connect => "connect", Timeout => "timeout", Http => "http" }
}

vocabulary! {
    /// `role`: a facility meter's place at the site boundary.
    Role {
        UtilityIn => "utility_in", BackupGenOut => "backup_gen_out", FuelIn => "fuel_in",
        OnsiteRenewableConsumed => "onsite_renewable_consumed", OnsiteRenewableExported => "onsite_renewable_exported",
        ChilledWaterIn => "chilled_water_in", UpsOut => "ups_out", PduOut => "pdu_out", ItIn => "it_in",
        Cooling => "cooling", WaterIn => "water_in", WaterPotableIn => "water_potable_in", HeatReusedOut => "heat_reused_out",
    }
}

/// What a role's meter measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    /// Electrical or thermal energy: `Wh`, `kWh`, `MWh`.
    Energy,
    /// Water: `m3`, `L`.
    Water,
    /// Generator fuel: `L`.
    Fuel,
}

impl Role {
    pub const fn quantity(self) -> Quantity {
        match self {
            Role::FuelIn => Quantity::Fuel,
            Role::WaterIn | Role::WaterPotableIn => Quantity::Water,
            _ => Quantity::Energy,
        }
    }

    /// Units a meter of this role may declare.
    pub const fn units(self) -> &'static [&'static str] {
        match self.quantity() {
            Quantity::Energy => &["Wh", "kWh", "MWh"],
            Quantity::Water => &["m3", "L"],
            Quantity::Fuel => &["L"],
        }
    }

    /// The unit indicators and reports use for this role (kWh, litres of fuel, m³ of water).
    pub const fn report_unit(self) -> &'static str {
        match self.quantity() {
            Quantity::Energy => "kWh",
            Quantity::Water => "m3",
            Quantity::Fuel => "L",
        }
    }

    /// PUE category of an IT metering point.
    pub const fn it_category(self) -> Option<u8> {
        match self {
            Role::UpsOut => Some(1),
            Role::PduOut => Some(2),
            Role::ItIn => Some(3),
            _ => None,
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.iter().copied().find(|r| r.as_str() == s)
    }
}

impl Method {
    /// Measured methods read the power at the machine's input; the others estimate it.
    pub const fn quality(self) -> Quality {
        match self {
            Method::BmcDcmi | Method::BmcRedfish | Method::PsuInput | Method::AcpiPowerMeter => Quality::Measured,
            Method::RaplUplift | Method::Model => Quality::Estimated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_ordered_best_first_and_labelled_with_their_quality() {
        let measured: Vec<_> = Method::ALL.iter().filter(|m| m.quality() == Quality::Measured).collect();
        assert_eq!(measured.len(), 4);
        assert_eq!(Method::ALL.first(), Some(&Method::BmcDcmi));
        assert_eq!(Method::Model.quality().as_str(), "estimated");
        assert!(Method::RaplUplift < Method::Model && Method::PsuInput < Method::AcpiPowerMeter);
    }

    #[test]
    fn label_values_are_valid_and_unique() {
        let all: Vec<&str> = Domain::ALL.iter().map(|d| d.as_str()).collect();
        let mut dedup = all.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(all.len(), dedup.len());
        assert!(all.iter().all(|v| v.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }
}
