//! Modbus TCP meter reader (`kind = "modbus"`): reads one cumulative energy
//! (or volume) register with function 03 (holding) or 04 (input) and turns it
//! into micro-units of the meter's unit.
//!
//! `register` is the 0-based protocol address sent on the wire; vendor tables
//! that number registers from 1 (Schneider's "register 3204", "40001"/"30001"
//! notation) need 1 subtracted. Multi-word values are big-endian within each
//! word; `word_order = "big"` puts the most significant word first, `"little"`
//! the least significant first. Integer registers × `scale` are converted with
//! integer arithmetic (exact whenever the scale is a decimal with at most 6
//! places: 1000, 10, 0.1, 0.001…); `float32` registers go through f64 and are
//! rounded to the micro-unit. One TCP connection is kept per meter and dropped
//! on any error, so the next read reconnects.

use std::net::SocketAddr;

use tokio_modbus::client::{Context, Reader as _};
use tokio_modbus::{ExceptionCode, Slave};

use super::convert::{Decimal, ValueError, float_to_micro, to_micro};
use super::reading::{ReadError, Reading};
use crate::config::{MeterConfig, RegisterFunction, RegisterType, WordOrder};
use crate::ledger::writer::now_ms;

/// What to read and how to decode it, from a validated meter config.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterSpec {
    pub address: String,
    pub unit_id: u8,
    pub register: u16,
    pub value_type: RegisterType,
    pub word_order: WordOrder,
    pub function: RegisterFunction,
    /// Raw × scale = value in `unit`, as an exact decimal.
    pub scale: Decimal,
    pub scale_f64: f64,
    pub unit: String,
}

impl RegisterSpec {
    pub fn from_config(m: &MeterConfig) -> Result<RegisterSpec, ReadError> {
        let missing = |k: &str| ReadError::Config(format!("meter {:?}: no `{k}`", m.id));
        let scale_f64 = m.scale.unwrap_or(1.0);
        Ok(RegisterSpec {
            address: m.address.clone().ok_or_else(|| missing("address"))?,
            unit_id: m.unit_id.unwrap_or(1),
            register: m.register.ok_or_else(|| missing("register"))?,
            value_type: m.value_type.ok_or_else(|| missing("type"))?,
            word_order: m.word_order.unwrap_or_default(),
            function: m.function.unwrap_or_default(),
            scale: Decimal::from_f64(scale_f64).map_err(|e| ReadError::Config(format!("scale: {e}")))?,
            scale_f64,
            unit: m.unit.clone(),
        })
    }
}

/// Decodes the register words into micro-units of `spec.unit`.
pub fn decode(words: &[u16], spec: &RegisterSpec) -> Result<i64, ValueError> {
    let n = usize::from(spec.value_type.words());
    if words.len() != n {
        return Err(ValueError::NotANumber(format!("{} words where {:?} needs {n}", words.len(), spec.value_type)));
    }
    let ordered = words.iter().copied();
    let bits: u64 = match spec.word_order {
        WordOrder::Big => ordered.fold(0, |acc, w| (acc << 16) | u64::from(w)),
        WordOrder::Little => ordered.rev().fold(0, |acc, w| (acc << 16) | u64::from(w)),
    };
    let raw: i128 = match spec.value_type {
        RegisterType::Float32 => {
            let v = f64::from(f32::from_bits(bits as u32));
            return float_to_micro(v * spec.scale_f64);
        }
        RegisterType::Int32 => i128::from(bits as u32 as i32),
        RegisterType::Uint32 => i128::from(bits as u32),
        RegisterType::Int64 => i128::from(bits as i64),
        RegisterType::Uint64 => i128::from(bits),
    };
    let value = Decimal { mantissa: raw, exponent: 0 }
        .checked_mul(spec.scale)
        .ok_or_else(|| ValueError::Overflow(format!("{raw} × {}", spec.scale)))?;
    to_micro(value, &spec.unit, &spec.unit)
}

/// A Modbus TCP meter with its (lazily opened) connection.
pub struct ModbusReader {
    spec: RegisterSpec,
    ctx: Option<Context>,
}

impl ModbusReader {
    pub fn new(spec: RegisterSpec) -> Self {
        ModbusReader { spec, ctx: None }
    }

    /// Reads the register once (connecting first when needed).
    pub async fn read(&mut self) -> Result<Vec<Reading>, ReadError> {
        let ctx = match &mut self.ctx {
            Some(c) => c,
            None => self.ctx.insert(connect(&self.spec).await?),
        };
        let (reg, n) = (self.spec.register, self.spec.value_type.words());
        let answer = match self.spec.function {
            RegisterFunction::Holding => ctx.read_holding_registers(reg, n).await,
            RegisterFunction::Input => ctx.read_input_registers(reg, n).await,
        };
        let ts_ms = now_ms();
        let words = match answer {
            Ok(Ok(words)) => words,
            Ok(Err(code)) => return Err(exception(code, &self.spec)),
            Err(e) => {
                self.ctx = None;
                return Err(ReadError::Io(format!("{}: {e}", self.spec.address)));
            }
        };
        let value_micro = decode(&words, &self.spec)?;
        Ok(vec![Reading { ts_ms, value_micro }])
    }

    /// Drops the connection (after a timeout or error); the next read reconnects.
    pub fn reset(&mut self) {
        self.ctx = None;
    }
}

/// Opens the TCP connection to the meter or gateway (any address the name resolves to first).
async fn connect(spec: &RegisterSpec) -> Result<Context, ReadError> {
    let addr: SocketAddr = tokio::net::lookup_host(&spec.address)
        .await
        .map_err(|e| ReadError::Io(format!("cannot resolve {}: {e}", spec.address)))?
        .next()
        .ok_or_else(|| ReadError::Io(format!("{} resolves to no address", spec.address)))?;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| ReadError::Io(format!("cannot connect to {addr}: {e}")))?;
    Ok(tokio_modbus::client::tcp::attach_slave(stream, Slave(spec.unit_id)))
}

fn exception(code: ExceptionCode, spec: &RegisterSpec) -> ReadError {
    let what = format!(
        "{} answered Modbus exception {code:?} for {:?} register {} ({} words, unit id {})",
        spec.address,
        spec.function,
        spec.register,
        spec.value_type.words(),
        spec.unit_id
    );
    match code {
        ExceptionCode::IllegalFunction | ExceptionCode::IllegalDataAddress | ExceptionCode::IllegalDataValue => {
            ReadError::Missing(format!(
                "{what}: check `register` (0-based: vendor register number − 1), `function` and `unit_id`"
            ))
        }
        _ => ReadError::Io(what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(t: RegisterType, order: WordOrder, scale: f64, unit: &str) -> RegisterSpec {
        RegisterSpec {
            address: "127.0.0.1:502".into(),
            unit_id: 1,
            register: 0,
            value_type: t,
            word_order: order,
            function: RegisterFunction::Holding,
            scale: Decimal::from_f64(scale).expect("scale"),
            scale_f64: scale,
            unit: unit.into(),
        }
    }

    /// The words of a 64-bit value, most significant first.
    fn words64(v: u64) -> Vec<u16> {
        (0..4).rev().map(|i| (v >> (16 * i)) as u16).collect()
    }

    #[test]
    fn integer_types_and_word_orders() {
        use RegisterType::*;
        use WordOrder::*;
        // 0x0001_0002 = 65538.
        assert_eq!(decode(&[0x0001, 0x0002], &spec(Uint32, Big, 1.0, "Wh")), Ok(65_538_000_000));
        assert_eq!(decode(&[0x0002, 0x0001], &spec(Uint32, Little, 1.0, "Wh")), Ok(65_538_000_000));
        assert_eq!(decode(&[0x0001, 0x0002], &spec(Int32, Big, 1.0, "Wh")), Ok(65_538_000_000));
        // Above 2^31 an uint32 stays positive; the same bits as int32 are negative and refused.
        assert_eq!(decode(&[0x8000, 0x0000], &spec(Uint32, Big, 1.0, "Wh")), Ok(2_147_483_648_000_000));
        assert!(matches!(decode(&[0x8000, 0x0000], &spec(Int32, Big, 1.0, "Wh")), Err(ValueError::Negative(_))));
        // int64 Wh beyond 2^32 (Schneider PM5xxx 3204): 12 345 678 901 Wh.
        let w = words64(12_345_678_901);
        assert_eq!(decode(&w, &spec(Int64, Big, 1.0, "Wh")), Ok(12_345_678_901_000_000));
        let rev: Vec<u16> = w.iter().rev().copied().collect();
        assert_eq!(decode(&rev, &spec(Int64, Little, 1.0, "Wh")), Ok(12_345_678_901_000_000));
        // Word order matters: read the wrong way round it is another number.
        assert_ne!(decode(&rev, &spec(Int64, Big, 1.0, "Wh")), Ok(12_345_678_901_000_000));
        assert_eq!(decode(&words64(u64::MAX), &spec(Uint64, Big, 1e-9, "Wh")), Ok(18_446_744_073_709_552));
        assert!(matches!(decode(&words64(u64::MAX), &spec(Int64, Big, 1.0, "Wh")), Err(ValueError::Negative(_))));
        assert!(matches!(decode(&words64(u64::MAX), &spec(Uint64, Big, 1.0, "Wh")), Err(ValueError::Overflow(_))));
        assert!(decode(&[1, 2, 3], &spec(Uint32, Big, 1.0, "Wh")).is_err());
    }

    #[test]
    fn scales_are_exact_decimals() {
        use RegisterType::*;
        use WordOrder::*;
        // Socomec-style U32 in 0.1 kWh: 123 456 789 × 0.1 = 12 345 678.9 kWh exactly.
        assert_eq!(decode(&[0x075B, 0xCD15], &spec(Uint32, Big, 0.1, "kWh")), Ok(12_345_678_900_000));
        // Wh register booked in kWh: × 0.001.
        assert_eq!(decode(&words64(1_250), &spec(Int64, Big, 0.001, "kWh")), Ok(1_250_000));
        assert_eq!(decode(&[0, 7], &spec(Uint32, Big, 1000.0, "Wh")), Ok(7_000_000_000));
        assert_eq!(decode(&[0, 3], &spec(Uint32, Big, 2.5, "Wh")), Ok(7_500_000));
        // Finer than a micro-unit: rounded there.
        assert_eq!(decode(&[0, 1], &spec(Uint32, Big, 1e-7, "kWh")), Ok(0));
        assert_eq!(decode(&[0, 5], &spec(Uint32, Big, 1e-7, "kWh")), Ok(1));
    }

    #[test]
    fn floats_decode_through_f64() {
        use RegisterType::*;
        use WordOrder::*;
        let bits = 1234.5f32.to_bits();
        let (hi, lo) = ((bits >> 16) as u16, bits as u16);
        assert_eq!(decode(&[hi, lo], &spec(Float32, Big, 1.0, "kWh")), Ok(1_234_500_000));
        assert_eq!(decode(&[lo, hi], &spec(Float32, Little, 1.0, "kWh")), Ok(1_234_500_000));
        assert_eq!(decode(&[hi, lo], &spec(Float32, Big, 1000.0, "Wh")), Ok(1_234_500_000_000));
        let w = |v: f32| [(v.to_bits() >> 16) as u16, v.to_bits() as u16];
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1.0] {
            assert!(decode(&w(bad), &spec(Float32, Big, 1.0, "kWh")).is_err(), "{bad}");
        }
        assert!(matches!(decode(&w(f32::MAX), &spec(Float32, Big, 1.0, "kWh")), Err(ValueError::Overflow(_))));
    }
}
