module queueworker/bench/loadgen

go 1.22
