//! Reading corpus files: from the user's `--input` arguments to ordered batches of documents.
//!
//! In the order a file is read: [`sources`] resolves inputs (files, directories, globs) into a
//! sorted manifest of [`sources::CorpusFile`]s; [`reader`] scans each file through DataFusion in
//! manifest order, Parquet and CSV with DataFusion's own formats and line-oriented files through
//! [`text_table`] (plain text) and [`json_lines`], both over [`lines`] (bounded, optionally
//! compressed line reading). Whatever cannot be used is handled by [`bad_records`]: an error
//! naming the file and row, or a skip that is counted. Remote inputs (`s3://`, `http(s)://`,
//! `hf://datasets/`) are listed and read in place by [`remote`].

pub mod bad_records;
pub mod json_lines;
pub mod lines;
pub mod parquet_resume;
pub mod reader;
pub mod remote;
pub mod sources;
pub mod text_table;
