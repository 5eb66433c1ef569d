//! ggml tensor types (`enum ggml_type`): one table entry per type holding its
//! on-disk code, name, block layout and the llama.cpp file type
//! (`general.file_type`, `enum llama_ftype`) of a file whose bulk is that type.
//!
//! Bottom of the crate: imports nothing else of it. The GGUF reader and
//! writer, the quantizers, the converter and `/info` all read these facts.

use std::fmt;
use std::str::FromStr;

/// `LLAMA_FTYPE_GUESSED`: the file type of a file whose bulk type has none.
const FTYPE_GUESSED: u32 = 1024;

/// Defines `GgmlType` and its facts from one line per type:
/// `Variant = code, "NAME", elements per block x bytes per block, ftype;`
/// where `ftype` is `Some((llama_ftype, "NAME"))` or `None`.
macro_rules! ggml_types {
    ($($(#[$m:meta])* $v:ident = $code:literal, $name:literal, $block:literal x $bytes:literal, $ftype:expr;)*) => {
        /// A ggml tensor type as stored in GGUF (`enum ggml_type`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum GgmlType {
            $($(#[$m])* $v,)*
            /// Any other code: readable (sizes known or not), never written by us.
            Other(u32),
        }

        impl GgmlType {
            /// Every named type, in code order.
            pub const ALL: &'static [GgmlType] = &[$(GgmlType::$v),*];

            pub fn from_code(code: u32) -> Self {
                match code {
                    $($code => Self::$v,)*
                    c => Self::Other(c),
                }
            }

            /// The facts of a named type.
            const fn facts(self) -> Option<Facts> {
                Some(match self {
                    $(Self::$v => Facts {
                        code: $code,
                        name: $name,
                        block: $block,
                        bytes: $bytes,
                        ftype: $ftype,
                    },)*
                    Self::Other(_) => return None,
                })
            }
        }
    };
}

/// What the table says about one named type.
struct Facts {
    code: u32,
    name: &'static str,
    block: usize,
    bytes: usize,
    /// `general.file_type` for a file whose bulk is this type, and its name.
    ftype: Option<(u32, &'static str)>,
}

ggml_types! {
    F32 = 0, "F32", 1 x 4, Some((0, "F32"));
    F16 = 1, "F16", 1 x 2, Some((1, "F16"));
    Q4_0 = 2, "Q4_0", 32 x 18, Some((2, "Q4_0"));
    Q4_1 = 3, "Q4_1", 32 x 20, Some((3, "Q4_1"));
    Q5_0 = 6, "Q5_0", 32 x 22, Some((8, "Q5_0"));
    Q5_1 = 7, "Q5_1", 32 x 24, Some((9, "Q5_1"));
    Q8_0 = 8, "Q8_0", 32 x 34, Some((7, "Q8_0"));
    Q2K = 10, "Q2_K", 256 x 84, Some((10, "Q2_K"));
    Q3K = 11, "Q3_K", 256 x 110, Some((12, "Q3_K_M"));
    Q4K = 12, "Q4_K", 256 x 144, Some((15, "Q4_K_M"));
    Q5K = 13, "Q5_K", 256 x 176, Some((17, "Q5_K_M"));
    Q6K = 14, "Q6_K", 256 x 210, Some((18, "Q6_K"));
    /// Intermediate type of ggml's K-quant dot products: no file type of its own.
    Q8K = 15, "Q8_K", 256 x 292, None;
    Iq4Nl = 20, "IQ4_NL", 32 x 18, Some((25, "IQ4_NL"));
    Iq4Xs = 23, "IQ4_XS", 256 x 136, Some((30, "IQ4_XS"));
    Bf16 = 30, "BF16", 1 x 2, Some((32, "BF16"));
}

/// Block layouts of codes without a name here (`Other`): `(code, elements, bytes)`.
const OTHER_LAYOUTS: [(u32, usize, usize); 6] = [
    (9, 32, 36), // Q8_1
    (24, 1, 1),  // I8
    (25, 1, 2),  // I16
    (26, 1, 4),  // I32
    (27, 1, 8),  // I64
    (28, 1, 8),  // F64
];

/// llama.cpp file types that are mixes of several tensor types (no single
/// bulk type above names them).
const MIXED_FTYPES: [(u32, &str); 18] = [
    (11, "Q3_K_S"),
    (13, "Q3_K_L"),
    (14, "Q4_K_S"),
    (16, "Q5_K_S"),
    (19, "IQ2_XXS"),
    (20, "IQ2_XS"),
    (21, "Q2_K_S"),
    (22, "IQ3_XS"),
    (23, "IQ3_XXS"),
    (24, "IQ1_S"),
    (26, "IQ3_S"),
    (27, "IQ3_M"),
    (28, "IQ2_S"),
    (29, "IQ2_M"),
    (31, "IQ1_M"),
    (36, "TQ1_0"),
    (37, "TQ2_0"),
    (38, "MXFP4_MOE"),
];

impl GgmlType {
    pub const fn code(self) -> u32 {
        match (self, self.facts()) {
            (Self::Other(c), _) => c,
            (_, Some(f)) => f.code,
            (_, None) => u32::MAX,
        }
    }

    /// (elements per block, bytes per block), or None for a type we do not know.
    pub const fn block_layout(self) -> Option<(usize, usize)> {
        if let Some(f) = self.facts() {
            return Some((f.block, f.bytes));
        }
        let mut i = 0;
        while i < OTHER_LAYOUTS.len() {
            let (code, bs, bb) = OTHER_LAYOUTS[i];
            if code == self.code() {
                return Some((bs, bb));
            }
            i += 1;
        }
        None
    }

    pub fn block_size(self) -> usize {
        self.block_layout().map_or(1, |l| l.0)
    }

    /// Bytes for a row of `n` elements; None when `n` is not a whole number of blocks.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        let (bs, bb) = self.block_layout()?;
        if !n.is_multiple_of(bs) {
            return None;
        }
        Some(n / bs * bb)
    }

    /// Bits per weight.
    pub fn bpw(self) -> f64 {
        match self.block_layout() {
            Some((bs, bb)) => bb as f64 * 8.0 / bs as f64,
            None => f64::NAN,
        }
    }

    pub fn name(self) -> String {
        match self.facts() {
            Some(f) => f.name.into(),
            None => format!("type#{}", self.code()),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for GgmlType {
    type Err = String;
    /// A type that can be the bulk of a llama.cpp file, by name (any case,
    /// `-` for `_`; `Q4K`, `IQ4XS` and the like without the `_` before letters).
    fn from_str(s: &str) -> Result<Self, String> {
        let want = s.to_ascii_uppercase().replace('-', "_");
        let parseable = || {
            Self::ALL
                .iter()
                .filter_map(|&t| t.facts().filter(|f| f.ftype.is_some()).map(|f| (t, f)))
        };
        for (t, f) in parseable() {
            let short = match f.name.split_once('_') {
                Some((a, b)) if b.starts_with(|c: char| c.is_ascii_alphabetic()) => {
                    Some(format!("{a}{b}"))
                }
                _ => None,
            };
            if want == f.name || short.as_deref() == Some(want.as_str()) {
                return Ok(t);
            }
        }
        let names: Vec<&str> = parseable().map(|(_, f)| f.name).collect();
        Err(format!(
            "unknown tensor type `{want}` (expected one of {})",
            names.join(", ")
        ))
    }
}

/// `general.file_type` (`enum llama_ftype`) for a file whose bulk is `t`.
pub fn llama_ftype_for(t: GgmlType) -> u32 {
    t.facts()
        .and_then(|f| f.ftype)
        .map_or(FTYPE_GUESSED, |(code, _)| code)
}

/// The name of a `general.file_type` value, as `/info` shows it.
pub fn llama_ftype_name(ftype: u32) -> String {
    let of_type = GgmlType::ALL
        .iter()
        .filter_map(|t| t.facts()?.ftype)
        .find(|f| f.0 == ftype);
    match of_type.or_else(|| MIXED_FTYPES.iter().copied().find(|f| f.0 == ftype)) {
        Some((_, name)) => name.to_string(),
        None => format!("ftype {ftype}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        for &t in GgmlType::ALL {
            assert_eq!(GgmlType::from_code(t.code()), t);
            assert_eq!(t.name().parse::<GgmlType>().ok().or(Some(t)), Some(t));
        }
        let mut codes: Vec<u32> = GgmlType::ALL.iter().map(|t| t.code()).collect();
        codes.extend(OTHER_LAYOUTS.iter().map(|l| l.0));
        let n = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), n, "a code is listed twice");
    }

    #[test]
    fn ftype_names_are_unique() {
        let mut f: Vec<u32> = GgmlType::ALL
            .iter()
            .filter_map(|&t| t.facts()?.ftype.map(|f| f.0))
            .chain(MIXED_FTYPES.iter().map(|f| f.0))
            .collect();
        let n = f.len();
        f.sort_unstable();
        f.dedup();
        assert_eq!(f.len(), n, "a file type is named twice");
        assert_eq!(llama_ftype_name(llama_ftype_for(GgmlType::Q4K)), "Q4_K_M");
        assert_eq!(llama_ftype_name(14), "Q4_K_S");
        assert_eq!(llama_ftype_name(999), "ftype 999");
        assert_eq!(llama_ftype_for(GgmlType::Q8K), FTYPE_GUESSED);
    }

    #[test]
    fn parses_names_and_short_forms() {
        for (s, t) in [
            ("q4_1", GgmlType::Q4_1),
            ("Q5_0", GgmlType::Q5_0),
            ("q5-1", GgmlType::Q5_1),
            ("Q2_K", GgmlType::Q2K),
            ("q3k", GgmlType::Q3K),
            ("Q5_K", GgmlType::Q5K),
            ("iq4xs", GgmlType::Iq4Xs),
            ("bf16", GgmlType::Bf16),
        ] {
            assert_eq!(s.parse::<GgmlType>(), Ok(t), "{s}");
        }
        for bad in ["Q40", "Q8_K", "type#3", ""] {
            assert!(bad.parse::<GgmlType>().is_err(), "{bad}");
        }
        assert_eq!(GgmlType::Other(9).block_layout(), Some((32, 36)));
        assert_eq!(GgmlType::Other(9).name(), "type#9");
    }
}
