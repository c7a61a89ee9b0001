//! Resuming inside a Parquet file without re-reading its prefix: the footer's row counts say
//! which whole row groups lie before the resume row, and the scan starts at the first row group
//! that holds it. Only the `text` column of the remaining row groups is read (by ranges, for a
//! remote object).
//!
//! Used when no `--sql` is set: a user query may filter rows, and then a position counts the
//! query's rows, not the file's.

use std::sync::Arc;

use arrow::compute::cast;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use flightlm_shared::FileVersion;
use futures::future::{BoxFuture, FutureExt};
use futures::StreamExt;
use object_store::path::Path;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::error::{PipelineError, Result};
use crate::read::reader::TEXT_COLUMN;
use crate::read::remote;
use crate::read::sources::CorpusFile;
use crate::read::text_table::text_schema;

/// Rows per batch, as the DataFusion scan reads them.
const BATCH_ROWS: usize = 4096;

/// The `text` batches of `file` from the first row group holding row `skip_rows`, and that row
/// group's first row; `None` when no whole row group lies before `skip_rows` (or the file has no
/// `text` column: the ordinary scan reports that).
pub async fn open_from_row(
    file: &CorpusFile,
    skip_rows: u64,
) -> Result<Option<(SendableRecordBatchStream, u64)>> {
    let failed = |error: parquet::errors::ParquetError| PipelineError::Query {
        path: file.path.clone(),
        message: error.to_string(),
    };
    let input: Box<dyn AsyncFileReader> = match &file.remote {
        Some(object) => Box::new(RemoteParquet {
            store: remote::store_for(&object.root)?,
            key: object.key_path()?,
            version: object.version.clone(),
        }),
        None => Box::new(tokio::fs::File::open(&file.path).await.map_err(|source| {
            PipelineError::Io {
                path: file.path.clone(),
                source,
            }
        })?),
    };
    let builder = ParquetRecordBatchStreamBuilder::new(input)
        .await
        .map_err(failed)?;
    let Some(text_index) = builder
        .schema()
        .fields()
        .iter()
        .position(|field| field.name() == TEXT_COLUMN)
    else {
        return Ok(None);
    };
    let mut first_group = 0;
    let mut first_row = 0u64;
    for group in builder.metadata().row_groups() {
        let rows = group.num_rows() as u64;
        if first_row + rows > skip_rows {
            break;
        }
        first_row += rows;
        first_group += 1;
    }
    if first_group == 0 {
        return Ok(None);
    }
    let groups = (first_group..builder.metadata().num_row_groups()).collect();
    let projection = ProjectionMask::roots(builder.parquet_schema(), [text_index]);
    let batches = builder
        .with_row_groups(groups)
        .with_projection(projection)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(failed)?;
    let schema = text_schema_nullable();
    let output_schema = schema.clone();
    let texts = batches.map(move |batch| {
        let batch = batch.map_err(|error| DataFusionError::External(Box::new(error)))?;
        let text = cast(batch.column(0), &DataType::Utf8)?;
        Ok(RecordBatch::try_new(output_schema.clone(), vec![text])?)
    });
    Ok(Some((
        Box::pin(RecordBatchStreamAdapter::new(schema, texts)),
        first_row,
    )))
}

/// A remote Parquet object, read by ranges through the retrying store at its listed version.
struct RemoteParquet {
    store: remote::store::RemoteStore,
    key: Path,
    version: FileVersion,
}

impl AsyncFileReader for RemoteParquet {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .fetch(&self.key, &self.version, range)
                .await
                .map_err(|error| ParquetError::External(Box::new(error)))
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.version.size;
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(&mut *self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// One nullable Utf8 `text` column: Parquet text may hold nulls, counted downstream.
fn text_schema_nullable() -> arrow::datatypes::SchemaRef {
    let field = text_schema().field(0).clone().with_nullable(true);
    Arc::new(arrow::datatypes::Schema::new(vec![field]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, StringArray};

    fn write(path: &std::path::Path, rows: usize, group_rows: usize) {
        let schema = text_schema();
        let texts = StringArray::from_iter_values((0..rows).map(|row| format!("row {row}")));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(texts)]).unwrap();
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(group_rows))
            .build();
        let file = std::fs::File::create(path).unwrap();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, schema, Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    #[test]
    fn resuming_starts_at_the_row_group_holding_the_row() {
        let dir = std::env::temp_dir().join(format!("flightlm-parquet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("groups.parquet");
        write(&path, 1000, 100);
        let file = CorpusFile::classify(&path).unwrap();
        let runtime = crate::read::reader::reader_runtime().unwrap();
        let (mut batches, first_row) = runtime
            .block_on(open_from_row(&file, 250))
            .unwrap()
            .expect("two whole row groups lie before row 250");
        assert_eq!(first_row, 200);
        let first = runtime.block_on(batches.next()).unwrap().unwrap();
        let texts = first
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(texts.value(0), "row 200");
        let rest: usize = runtime.block_on(
            batches
                .map(|batch| batch.unwrap().num_rows())
                .fold(0, |a, b| async move { a + b }),
        );
        assert_eq!(texts.len() + rest, 800, "the rows from 200 on, each once");
        assert!(runtime
            .block_on(open_from_row(&file, 99))
            .unwrap()
            .is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
