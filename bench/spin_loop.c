/* A CPU-bound loop for bench/profile_overhead.py: argv[1] iterations of arithmetic,
 * printing the seconds they took. With a second argument, it sleeps a millisecond every
 * million iterations, so that many copies share the CPUs without starving them. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile unsigned long long sink;

__attribute__((noinline)) static unsigned long long work(unsigned long long n)
{
	unsigned long long x = 0;

	for (unsigned long long i = 0; i < n; i++)
		x = x * 6364136223846793005ULL + i;
	return x;
}

int main(int argc, char **argv)
{
	unsigned long long n = strtoull(argv[1], 0, 10);
	struct timespec a, b, nap = { 0, 1000000 };

	clock_gettime(CLOCK_MONOTONIC, &a);
	if (argc > 2) {
		for (unsigned long long done = 0; done < n; done += 1000000) {
			sink += work(1000000);
			nanosleep(&nap, 0);
		}
	} else {
		sink = work(n);
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
	return 0;
}
