#pragma once
// safetensors I/O: strict header parsing, memory-mapped single files, folders and sharded
// indexes as stores, and crash-safe writing of sharded model folders.

#include "alloy/store/file_io.hpp"
#include "alloy/store/safetensors_format.hpp"
#include "alloy/store/safetensors_store.hpp"
#include "alloy/store/safetensors_writer.hpp"
