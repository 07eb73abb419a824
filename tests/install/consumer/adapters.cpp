#include <alloy/alloy.hpp>
#include <alloy/eigen/eigen_store.hpp>
#include <alloy/xtensor/xtensor_store.hpp>

#include <Eigen/Core>
#include <xtensor/xtensor.hpp>

#include <cstdio>

// The same weights in Eigen and in xtensor, averaged into the Eigen copy through alloy.
int main() {
  Eigen::Matrix<float, 2, 2, Eigen::RowMajor> a;
  a << 1, 2, 3, 4;
  xt::xtensor<float, 2> b = {{3, 4}, {5, 6}};
  alloy::eigen_adapter::eigen_store eigen;
  eigen.add("w", a);
  alloy::xtensor_adapter::xtensor_store xtensor;
  xtensor.add("w", b);
  alloy::continual_merger merger(alloy::copy_store(eigen));
  merger.end_task(alloy::cpu_backend{}, eigen);
  merger.end_task(alloy::cpu_backend{}, xtensor);
  alloy::assign(eigen, merger.global());
  std::printf("consumer_adapters averaged to %g %g %g %g\n", double(a(0, 0)), double(a(0, 1)), double(a(1, 0)),
              double(a(1, 1)));
  return a(0, 0) == 2 && a(1, 1) == 5 ? 0 : 1;
}
