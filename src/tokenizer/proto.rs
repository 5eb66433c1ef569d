//! Just enough protobuf to read and write SentencePiece's `ModelProto`.

/// A decoded protobuf field value.
pub enum Field<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Iterate over `(field_number, value)` pairs of one message.
pub fn fields(mut buf: &[u8]) -> impl Iterator<Item = Result<(u32, Field<'_>), String>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        Some((|| {
            let key = varint(&mut buf)?;
            let num = (key >> 3) as u32;
            let v = match key & 7 {
                0 => Field::Varint(varint(&mut buf)?),
                1 => {
                    take(&mut buf, 8)?;
                    Field::Fixed64
                }
                2 => {
                    let n = varint(&mut buf)?;
                    let n = usize::try_from(n).map_err(|_| "length overflows".to_string())?;
                    Field::Bytes(take(&mut buf, n)?)
                }
                5 => Field::Fixed32(u32::from_le_bytes(
                    take(&mut buf, 4)?
                        .try_into()
                        .map_err(|_| "bad fixed32".to_string())?,
                )),
                w => return Err(format!("unsupported wire type {w} for field {num}")),
            };
            Ok((num, v))
        })())
        .inspect(|r| {
            if r.is_err() {
                buf = &[];
            }
        })
    })
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if buf.len() < n {
        return Err(format!("truncated: need {n} bytes, have {}", buf.len()));
    }
    let (a, b) = buf.split_at(n);
    *buf = b;
    Ok(a)
}

fn varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = *buf.first().ok_or("truncated varint")?;
        *buf = &buf[1..];
        v |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// Protobuf encoder.
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    pub fn uint(&mut self, field: u32, v: u64) {
        self.varint((field as u64) << 3);
        self.varint(v);
    }
    /// int32 fields encode negatives as 10-byte varints.
    pub fn int(&mut self, field: u32, v: i64) {
        self.uint(field, v as u64);
    }
    pub fn float(&mut self, field: u32, v: f32) {
        self.varint(((field as u64) << 3) | 5);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, field: u32, b: &[u8]) {
        self.varint(((field as u64) << 3) | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
}
