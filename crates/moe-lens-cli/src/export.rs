//! `moe-lens export DIR`: a finished scan's tidy CSV tables as Parquet files with the same columns
//! (`metrics.parquet`, `coactivation.parquet`, …), for pandas / polars / DuckDB / Spark users.
//!
//! Column types follow the CSVs' documented meaning (SCAN.md): counts and indices (`layer`,
//! `expert`, `count`, `picks`, …) are INT64, text (`lang`, `token`, `verdict`, …) is UTF-8 STRING,
//! every other numeric column is DOUBLE (a share written as `1` in the CSV is still a DOUBLE). A
//! column with empty cells (e.g. `metrics.csv`'s comparison columns on the reference language's
//! rows) is OPTIONAL, and those cells are nulls; the others are REQUIRED. Values are parsed from the
//! CSV text, which holds every float with full precision, so the Parquet values equal the CSV's.
//! Uncompressed (the crate is built without codecs, to stay light), one row group per file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use moe_lens::study::analyses::{
    COACTIVATION_CSV, CONSECUTIVE_CSV, PARTNERS_CSV, PROFILES_CSV, SPECIALISATION_CSV, SPECIALISATION_DOMAINS_CSV,
    SPECIALISATION_LANGS_CSV, SPECIALISATION_TOKENS_CSV,
};
use moe_lens::study::METRICS_CSV;
use parquet::basic::{LogicalType, Repetition, Type as Physical};
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The --out directory of a finished `moe-lens scan` or `moe-lens merge`.
    scan_dir: PathBuf,
    /// Folder for the .parquet files (default: the scan directory itself).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The tidy tables a scan writes (SCAN.md), in that order; `specialisation_domains.csv` only when
/// the corpus had domains.
pub const TABLES: [&str; 9] = [
    METRICS_CSV,
    COACTIVATION_CSV,
    PARTNERS_CSV,
    CONSECUTIVE_CSV,
    SPECIALISATION_CSV,
    SPECIALISATION_TOKENS_CSV,
    SPECIALISATION_LANGS_CSV,
    SPECIALISATION_DOMAINS_CSV,
    PROFILES_CSV,
];

/// Columns holding counts or indices: INT64.
const INT_COLUMNS: &[&str] = &[
    "layer",
    "expert",
    "partner",
    "rank",
    "count",
    "picks",
    "pairs",
    "token_id",
    "distinct_tokens",
    "tokens",
    "selections",
    "distinct",
    "experts_50",
    "experts_90",
    "top1_distinct",
    "top_expert",
    "most_specialized_expert",
    "matched_tokens",
];
/// Columns holding text: STRING.
const TEXT_COLUMNS: &[&str] = &["lang", "vs", "verdict", "token", "domain"];

/// A column's Parquet type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Double,
    Text,
}

/// The type of column `name` with cells `cells` (empty cells are nulls and do not decide).
pub fn column_kind(name: &str, cells: &[&str]) -> Kind {
    let present = || cells.iter().filter(|c| !c.is_empty());
    if TEXT_COLUMNS.contains(&name) {
        return Kind::Text;
    }
    if INT_COLUMNS.contains(&name) && present().all(|c| c.parse::<i64>().is_ok()) {
        return Kind::Int;
    }
    if present().all(|c| c.parse::<f64>().is_ok()) {
        return Kind::Double;
    }
    Kind::Text
}

/// Parses CSV text as RFC 4180 (fields quoted with `"` when they hold a comma, quote or line
/// break; quotes doubled): the header and the rows, each row checked to have the header's width.
pub fn parse_csv(text: &str) -> anyhow::Result<(Vec<String>, Vec<Vec<String>>)> {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if at_start => quoted = true,
            ',' => {
                row.push(std::mem::take(&mut field));
                at_start = true;
                continue;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
                at_start = true;
                continue;
            }
            _ => field.push(c),
        }
        at_start = false;
    }
    if quoted {
        bail!("a quoted field is not closed");
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    let mut it = rows.into_iter();
    let header = it.next().context("the file is empty (no header)")?;
    let rows: Vec<Vec<String>> = it.collect();
    if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != header.len()) {
        bail!("row {} has {} fields but the header has {}", i + 2, r.len(), header.len());
    }
    Ok((header, rows))
}

fn parquet_err(e: parquet::errors::ParquetError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Writes one CSV table as a Parquet file at `out`.
pub fn csv_to_parquet(csv: &Path, out: &Path) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
    let (header, rows) = parse_csv(&text).with_context(|| format!("{} is not a tidy CSV", csv.display()))?;
    let mut fields = Vec::new();
    let mut kinds = Vec::new();
    for (j, name) in header.iter().enumerate() {
        let cells: Vec<&str> = rows.iter().map(|r| r[j].as_str()).collect();
        let kind = column_kind(name, &cells);
        let optional = cells.iter().any(|c| c.is_empty());
        let b = match kind {
            Kind::Int => Type::primitive_type_builder(name, Physical::INT64),
            Kind::Double => Type::primitive_type_builder(name, Physical::DOUBLE),
            Kind::Text => {
                Type::primitive_type_builder(name, Physical::BYTE_ARRAY).with_logical_type(Some(LogicalType::String))
            }
        };
        let rep = if optional { Repetition::OPTIONAL } else { Repetition::REQUIRED };
        fields.push(Arc::new(b.with_repetition(rep).build().map_err(parquet_err)?));
        kinds.push((kind, optional));
    }
    let schema = Arc::new(Type::group_type_builder("schema").with_fields(fields).build().map_err(parquet_err)?);
    let props = Arc::new(WriterProperties::builder().set_created_by("moe-lens export".into()).build());
    moe_lens::fsutil::write_atomic_with(out, |w| {
        let res = (|| -> anyhow::Result<()> {
            let mut writer = SerializedFileWriter::new(w, schema, props).map_err(parquet_err)?;
            let mut group = writer.next_row_group().map_err(parquet_err)?;
            for (j, &(kind, optional)) in kinds.iter().enumerate() {
                let cells: Vec<&str> = rows.iter().map(|r| r[j].as_str()).collect();
                let defs: Vec<i16> = cells.iter().map(|c| i16::from(!c.is_empty())).collect();
                let defs = optional.then_some(defs.as_slice());
                let present = cells.iter().filter(|c| !c.is_empty());
                let mut col = group.next_column().map_err(parquet_err)?.context("the schema ran out of columns")?;
                match kind {
                    Kind::Int => {
                        let v: Vec<i64> = present.map(|c| c.parse::<i64>()).collect::<Result<_, _>>()?;
                        col.typed::<Int64Type>().write_batch(&v, defs, None).map_err(parquet_err)?;
                    }
                    Kind::Double => {
                        let v: Vec<f64> = present.map(|c| c.parse::<f64>()).collect::<Result<_, _>>()?;
                        col.typed::<DoubleType>().write_batch(&v, defs, None).map_err(parquet_err)?;
                    }
                    Kind::Text => {
                        let v: Vec<ByteArray> = present.map(|c| ByteArray::from(*c)).collect();
                        col.typed::<ByteArrayType>().write_batch(&v, defs, None).map_err(parquet_err)?;
                    }
                }
                col.close().map_err(parquet_err)?;
            }
            group.close().map_err(parquet_err)?;
            writer.close().map_err(parquet_err)?;
            Ok(())
        })();
        res.map_err(|e| moe_lens::Error::InvalidArgument {
            what: "parquet",
            msg: format!("{}: cannot write it: {e:#}", out.display()),
        })
    })?;
    Ok(rows.len())
}

pub fn run_export(a: ExportArgs) -> anyhow::Result<()> {
    let dir = &a.scan_dir;
    if !dir.join(METRICS_CSV).is_file() {
        bail!(
            "{} has no {METRICS_CSV}: give the --out directory of a finished `moe-lens scan` or `moe-lens merge`",
            dir.display()
        );
    }
    let out = a.out.clone().unwrap_or_else(|| dir.clone());
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    for name in TABLES {
        let csv = dir.join(name);
        if !csv.is_file() {
            if name == SPECIALISATION_DOMAINS_CSV {
                continue; // only for corpora with domains
            }
            bail!("{} has no {name}: was it written by an older moe-lens? Run the scan again", dir.display());
        }
        let target = out.join(Path::new(name).with_extension("parquet"));
        let rows = csv_to_parquet(&csv, &target)?;
        written.push(format!("{} ({rows} rows)", target.file_name().unwrap_or_default().to_string_lossy()));
    }
    eprintln!("export: wrote {} in {}", written.join(", "), out.display());
    Ok(())
}
