module ollamafleet.test/bodyreader

go 1.21
