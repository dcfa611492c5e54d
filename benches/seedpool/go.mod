module seedpool

go 1.19
