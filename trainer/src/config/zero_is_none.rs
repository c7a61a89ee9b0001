//! `Option<f64>` written as a number, with 0 (or a JSON null) standing for `None`: TOML cannot
//! write a missing value, and 0 is what `--max-grad-norm 0` means on the command line.

use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(value: &Option<f64>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.unwrap_or(0.0))
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    let value = Option::<f64>::deserialize(deserializer)?;
    Ok(value.filter(|norm| *norm != 0.0))
}
